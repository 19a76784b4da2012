"""This user's private cache folder: what is measured or compiled on this machine, kept across runs.

Nothing read from it is used unless only this user could have written it: a folder that is a
symlink or someone else's is refused (a shared /tmp folder is where another local user could
plant compiled code or skewed choices), and our own folders are narrowed to mode 0700 whatever
the umask (002 gives a new folder group write).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def private_cache_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/codellama-lsp/<name> (~/.cache by default), mode 0700."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "codellama-lsp" / name
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for checked in (folder.parent, folder):
        info = checked.lstat()
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(f"{checked}: not a folder of this user's; not caching there")
        if info.st_mode & 0o077:
            checked.chmod(0o700)
    return folder


def private_cache_or_temporary(name: str) -> tuple[Path, str]:
    """private_cache_dir(name), or where that is refused a fresh 0700 temporary folder (nothing
    kept across runs): (folder, why it is temporary, "" if it is not)."""
    try:
        return private_cache_dir(name), ""
    except OSError as e:
        return Path(tempfile.mkdtemp(prefix=f"codellama-lsp-{name}-")), str(e)
