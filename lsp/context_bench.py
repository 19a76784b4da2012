"""Does context help? Exact match on edits replayed from a repository's git history, with the
server's context off, from other open files, and from open files plus recent edits.

    python -m lsp.context_bench --repo PATH [--model PATH] [--commits 60] [--max-tasks 300]

For each of the last --commits non-merge commits, its hunks are replayed in order, as a
person would make them, on the files as they were before the commit: each hunk's added
lines go in, then the last added line of the hunk becomes a task (cut out after its
indentation; the model must write it back, as in `fit`'s held-out check). At that moment
the other files the commit touches are "open" (as they are by then), and the earlier hunks
of the commit are the "recent edits" (lsp.recent.RecentPlaces, fed as the server feeds it).
The same tasks run three times, same model, same run: no context, open files, open files +
recent edits. Scores use the repository benchmark's rule (training.evaluation.repo_lines).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.context import ContextSource
from engine.machine import describe_machine
from engine.options import CompletionSettings, PromptSettings
from engine.pipeline import Pipeline, Snapshot
from lsp.recent import CHUNK_LINES, RecentPlaces
from training.evaluation.repo_lines import LineTask, line_matches
from training.filters import FilterOptions, language_of

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
MAX_FILE_CHARS = 200_000
CONDITIONS = ("no context", "open files", "open files + recent edits")


@dataclass
class Hunk:
    old_start: int
    old_count: int
    added: list[str]


@dataclass
class Task:
    line: LineTask
    path: str
    line_number: int
    open_files: tuple[ContextSource, ...]
    recent: tuple[ContextSource, ...]
    context_lines: list[str] = field(default_factory=list)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout.decode(
        "utf-8", "replace"
    )


def hunks_of(diff: str) -> dict[str, list[Hunk]]:
    """Per file (new path): its -U0 hunks with the lines they add."""
    out: dict[str, list[Hunk]] = {}
    path, hunk = None, None
    for line in diff.split("\n"):
        if line.startswith("+++ "):
            path = line[6:] if line.startswith("+++ b/") else None
            hunk = None
        elif (m := HUNK.match(line)) and path:
            hunk = Hunk(int(m.group(1)), int(m.group(2) or 1), [])
            out.setdefault(path, []).append(hunk)
        elif hunk is not None and line.startswith("+") and not line.startswith("+++"):
            hunk.added.append(line[1:])
    return out


def commit_tasks(repo: Path, commit: str, options: FilterOptions) -> list[Task]:
    """Replay one commit's hunks; a task after each hunk that adds a non-blank line."""
    files = {p: h for p, h in hunks_of(git(repo, "show", "-U0", "--format=", "--no-color", commit)).items()}
    texts: dict[str, list[str]] = {}
    for path in list(files):
        if not language_of(path, options):
            del files[path]
            continue
        try:
            before = git(repo, "show", f"{commit}^:{path}")
        except subprocess.CalledProcessError:
            before = ""  # a new file
        if len(before) > MAX_FILE_CHARS:
            del files[path]
            continue
        texts[path] = before.split("\n")
    recent = RecentPlaces()
    tasks = []
    for path, hunks in files.items():
        shift = 0
        for hunk in hunks:
            lines = texts[path]
            start = hunk.old_start - 1 + shift if hunk.old_count else hunk.old_start + shift
            if not 0 <= start <= len(lines) - hunk.old_count:
                break  # a renamed file's hunks number the old path's lines: skip the rest of it
            lines[start : start + hunk.old_count] = hunk.added
            shift += len(hunk.added) - hunk.old_count
            nonblank = [i for i, s in enumerate(hunk.added) if s.strip()]
            if nonblank:
                tasks.append(task_at(path, texts, start + nonblank[-1], recent))
            if hunk.added:
                line = start + len(hunk.added) - 1
                around = "\n".join(lines[max(0, line - CHUNK_LINES // 2) : line + CHUNK_LINES // 2])
                recent.edited(path, path, line, around)
    return tasks


def task_at(path: str, texts: dict[str, list[str]], index: int, recent: RecentPlaces) -> Task:
    lines = texts[path]
    target = lines[index]
    indent = target[: len(target) - len(target.lstrip())]
    prefix = "".join(s + "\n" for s in lines[:index]) + indent
    suffix = "".join("\n" + s for s in lines[index + 1 :])
    joined = {other: "\n".join(text) for other, text in texts.items() if other != path}
    open_files = tuple(ContextSource(other, text, (other, hash(text))) for other, text in joined.items())
    line = LineTask(f"{path}:{index + 1}", prefix, suffix, target.strip())
    return Task(line, path, index, open_files[:3], recent.sources(4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.context_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="a git repository with some history")
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--commits", type=int, default=60)
    parser.add_argument("--max-tasks", type=int, default=300)
    args = parser.parse_args(argv)

    from engine.loader import load_engine

    options = FilterOptions()
    commits = git(args.repo, "log", "--no-merges", f"-n{args.commits}", "--format=%H").split()
    tasks: list[Task] = []
    for commit in reversed(commits):
        try:
            tasks += commit_tasks(args.repo, commit, options)
        except subprocess.CalledProcessError:
            continue  # the first commit has no parent
    tasks = tasks[: args.max_tasks]
    with_recent = sum(bool(t.recent) for t in tasks)
    loaded = load_engine(args.model, "cpu", cache_slots=1)
    pipeline = Pipeline(loaded.engine)
    settings = CompletionSettings(max_tokens=48, multiline="never", time_budget_ms=120_000, prompt=PromptSettings())
    started = time.perf_counter()
    hits = dict.fromkeys(CONDITIONS, 0)
    prompt_tokens = dict.fromkeys(CONDITIONS, 0)
    for task in tasks:
        for condition in CONDITIONS:
            sources = {
                "no context": (),
                "open files": task.open_files,
                "open files + recent edits": task.recent + task.open_files,
            }[condition]
            language = "python" if task.path.endswith(".py") else ""
            done = pipeline.complete(Snapshot(task.line.text, len(task.line.prefix), language, sources), settings)
            hits[condition] += line_matches(done.edit.text if done.edit else "", task.line)
            prompt_tokens[condition] += done.stats.prompt_tokens
    print(f"model: {loaded.describe()}")
    print(f"machine: {describe_machine()}; {time.strftime('%Y-%m-%d')}")
    print(
        f"repository {args.repo}: {len(commits)} commits, {len(tasks)} tasks ({with_recent} with earlier hunks "
        f"as recent edits), {time.perf_counter() - started:.0f} s"
    )
    print()
    print("| context | exact match | tasks | mean prompt tokens |")
    print("| --- | ---: | ---: | ---: |")
    for condition in CONDITIONS:
        n = max(len(tasks), 1)
        print(f"| {condition} | {100 * hits[condition] / n:.1f}% | {len(tasks)} | {prompt_tokens[condition] / n:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
