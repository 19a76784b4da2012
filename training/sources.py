"""Which files a corpus may draw from: git-tracked files of repositories, or plain folders.

A git repository contributes its tracked files only (`git ls-files`), so .gitignore,
.git/info/exclude and the global excludes file are honoured by git itself; untracked and
ignored paths are listed too, so the report can count them. A plain folder (the Python
standard library, unpacked PyPI packages) contributes every file under it except version
control metadata.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VCS_DIRS = frozenset({".git", ".hg", ".svn"})


class SourceError(ValueError):
    """A source folder is missing or is not what it was given as."""


@dataclass(frozen=True)
class SourceFile:
    root: Path
    """The repository or folder the file was found under."""
    relpath: str
    """Path relative to root, with "/" separators."""
    skip: str | None = None
    """Set for paths listed only to be counted: "untracked" or "gitignored"."""

    @property
    def path(self) -> Path:
        return self.root / self.relpath

    @property
    def display(self) -> str:
        """root/relpath as printable text: a name with bytes that are not UTF-8 shows them as \\xNN."""
        name = f"{self.root.name}/{self.relpath}"
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _git(repo: Path, *args: str) -> list[str]:
    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True)
    except FileNotFoundError as e:
        raise SourceError("git is not installed; --repo needs it (use --dir for plain folders)") from e
    except subprocess.CalledProcessError as e:
        raise SourceError(f"{repo}: git {' '.join(args)} failed: {e.stderr.decode(errors='replace').strip()}") from e
    return [p for p in result.stdout.decode("utf-8", errors="surrogateescape").split("\0") if p]


def git_files(repo: str | Path) -> Iterator[SourceFile]:
    """Tracked files of a work tree (sorted), then untracked and ignored paths marked as skipped."""
    repo = Path(repo)
    if not repo.is_dir():
        raise SourceError(f"{repo}: no such folder")
    if not is_git_work_tree(repo):
        raise SourceError(f"{repo}: not a git work tree (use --dir for plain folders)")
    # A subfolder of a repository contributes what is tracked under it.
    # -z: names verbatim (no quoting); paths are relative to `repo`.
    for rel in sorted(_git(repo, "ls-files", "-z", "--cached")):
        yield SourceFile(repo, rel)
    for rel in sorted(_git(repo, "ls-files", "-z", "--others", "--exclude-standard")):
        yield SourceFile(repo, rel, skip="untracked")
    # --directory: an ignored folder (node_modules/, build/) counts once, not per file.
    for rel in sorted(_git(repo, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory")):
        yield SourceFile(repo, rel.rstrip("/"), skip="gitignored")


def folder_files(folder: str | Path) -> Iterator[SourceFile]:
    """Every file under a plain folder, in sorted order, without VCS metadata."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder")
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in VCS_DIRS)
        rel_dir = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            yield SourceFile(folder, (rel_dir / name).as_posix())


def is_git_work_tree(path: Path) -> bool:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False
        )
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.strip() == b"true"
