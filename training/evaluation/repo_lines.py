"""Exact-match tasks: single lines cut out of the git-tracked source files of a repository.

Point it at a repository the model was not trained on (held out). The sample is
deterministic for a given repository state and seed: candidate lines are the non-blank
lines of tracked source files in sorted path order, and `seed` picks which. The prefix is
the file before the line, the suffix the file after the line's newline (so the middle is
one whole line, as in HumanEval's single-line tasks); a completion matches when its first
line equals the original line, whitespace trimmed. Each task also carries, as an editor
would have them open, the files just before and after it in its folder: the prompt gets
snippets of them, as the server's does (the model runs through engine.pipeline).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from engine.context import ContextSource
from training.filters import FilterOptions, decode_source, language_of
from training.sources import SourceError

FILTERS = FilterOptions(max_bytes=1 << 20)
"""training.filters' code languages and limits (a line over 1,000 characters: minified or generated)."""
NEIGHBOUR_CHARS = 64 * 1024
"""Characters of a neighbouring file kept as context (as an open document, cut)."""


RepoError = SourceError
"""The repository cannot be used (the one error type of the training tools' sources)."""


@dataclass(frozen=True)
class LineTask:
    task_id: str
    """"path:line" (1-based line number)."""
    prefix: str
    suffix: str
    line: str
    """The original line, without its newline."""
    sources: tuple[ContextSource, ...] = ()
    """Other files, as open documents that lend the prompt snippets."""

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def tracked_source_files(repo: Path, options: FilterOptions = FILTERS) -> list[Path]:
    """Git-tracked files of a code language, relative to the repository root, sorted."""
    if not repo.is_dir():
        raise RepoError(f"{repo}: not a directory")
    try:
        listing = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached"], capture_output=True, check=True
        ).stdout
    except FileNotFoundError as e:
        raise RepoError("git is not installed; --repo needs it to list the tracked files") from e
    except subprocess.CalledProcessError as e:
        message = e.stderr.decode(errors="replace").strip()
        raise RepoError(f"{repo}: not a git repository ({message})") from e
    paths = [Path(p) for p in listing.decode("utf-8", errors="surrogateescape").split("\0") if p]
    return sorted(p for p in paths if language_of(p.as_posix(), options))


def read_source(path: Path, options: FilterOptions = FILTERS) -> str | None:
    """The file's text, or None for files that are not plain, reasonable source (training.filters)."""
    try:
        if not path.is_file() or path.stat().st_size > options.max_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    text, why = decode_source(data)
    if why or any(len(line) > options.max_line_length for line in text.splitlines()):
        return None
    return text


def nonblank_line_numbers(text: str) -> list[int]:
    return [i for i, line in enumerate(text.split("\n")) if line.strip()]


def sample_line_tasks(repo: str | Path, count: int, seed: int = 0) -> list[LineTask]:
    """`count` lines drawn without replacement from all non-blank lines of the tracked files."""
    repo = Path(repo)
    texts: list[tuple[Path, str, list[int]]] = []
    for relative in tracked_source_files(repo):
        text = read_source(repo / relative)
        if text is not None:
            lines = nonblank_line_numbers(text)
            if lines:
                texts.append((relative, text, lines))
    if not texts:
        raise RepoError(f"{repo}: no tracked source files with non-blank lines")
    # Cumulative line counts map one global index to (file, line) without listing every line.
    ends = []
    total = 0
    for _, _, lines in texts:
        total += len(lines)
        ends.append(total)
    picks = sorted(random.Random(seed).sample(range(total), min(count, total)))
    tasks = []
    for pick in picks:
        file_index = bisect.bisect_right(ends, pick)
        relative, text, lines = texts[file_index]
        line_number = lines[pick - (ends[file_index - 1] if file_index else 0)]
        task = cut_line(f"{relative.as_posix()}:{line_number + 1}", text, line_number)
        tasks.append(dataclasses.replace(task, sources=neighbours(texts, file_index)))
    return tasks


def neighbours(texts: list[tuple[Path, str, list[int]]], index: int) -> tuple[ContextSource, ...]:
    """The files before and after texts[index] in the same folder (sorted order), as context sources."""
    folder = texts[index][0].parent
    found = []
    for other in (index - 1, index + 1):
        if 0 <= other < len(texts) and texts[other][0].parent == folder:
            path, text, _ = texts[other]
            found.append(ContextSource(path.as_posix(), text[:NEIGHBOUR_CHARS], (path.as_posix(),)))
    return tuple(found)


def cut_line(task_id: str, text: str, line_number: int) -> LineTask:
    """Remove 0-based line `line_number` and its newline from text."""
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[:line_number])
    end = min(len(text), start + len(lines[line_number]) + 1)
    return LineTask(task_id, text[:start], text[end:], lines[line_number])


def line_matches(completion: str, task: LineTask) -> bool:
    """The one exact-match rule (the repository benchmark and fit's held-out check): the
    completion's first line equals the task's line, whitespace trimmed."""
    return completion.split("\n", 1)[0].strip() == task.line.strip()
