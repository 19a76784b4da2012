"""This user's private cache folder: what is measured or compiled on this machine, kept across runs.

Nothing read from it is executed unless only this user could have written it: a folder that
is a symlink, someone else's, or writable by the group or others is refused (a shared /tmp
folder is where another local user could plant code or skewed choices).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_cache_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/codellama-lsp/<name> (~/.cache by default), created with mode 0700."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "codellama-lsp" / name
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for checked in (folder, folder.parent):
        info = checked.lstat()
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise PermissionError(f"{checked}: not a folder of this user's that only it can write; not caching there")
    return folder
