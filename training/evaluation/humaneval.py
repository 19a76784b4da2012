"""HumanEval infilling tasks (OpenAI's human-eval-infilling, MIT licence): loading and programs.

Single-line: 1033 tasks, the middle is exactly one line ending in "\\n". Multi-line: 5815
tasks, the middle is a block of whole lines. A completion passes when

    prompt + completion + suffix + "\\n" + test + "\\n" + f"check({entry_point})"

runs without error (OpenAI's `check_correctness`, run here in a sandboxed child process).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
BENCHMARK_FILES = {
    "single": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi": "HumanEval-MultiLineInfilling.jsonl.gz",
}
BENCHMARK_NAMES = {"single": "single-line", "multi": "multi-line"}
FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")

# Code Llama 7B, greedy pass@1 in percent (Code Llama paper, Table 14).
PUBLISHED_CODE_LLAMA_7B = {
    ("single", "psm"): 77.0,
    ("single", "spm"): 83.3,
    ("multi", "psm"): 49.7,
    ("multi", "spm"): 51.2,
}


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class InfillTask:
    task_id: str
    prompt: str
    """The prefix: everything before the masked middle."""
    suffix: str
    canonical_solution: str
    """The reference middle."""
    test: str
    entry_point: str

    @property
    def problem(self) -> str:
        """The HumanEval problem this task was cut from, e.g. "HumanEval/12"."""
        match = re.search(r"HumanEval/\d+", self.task_id)
        return match.group(0) if match else self.task_id


def check_program(task: InfillTask, completion: str) -> str:
    """The program whose clean exit means the completion passes."""
    return task.prompt + completion + task.suffix + "\n" + task.test + "\n" + f"check({task.entry_point})"


def load_tasks(benchmark: str, path: Path | None = None) -> list[InfillTask]:
    """All tasks of "single" or "multi", in file order (which is sorted by problem, then line)."""
    if benchmark not in BENCHMARK_FILES:
        raise BenchmarkDataError(f"unknown benchmark {benchmark!r}: expected one of {', '.join(BENCHMARK_FILES)}")
    path = path or DATA_DIR / BENCHMARK_FILES[benchmark]
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: benchmark file not found (is the package installed with its data?)")
    tasks = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    tasks.append(parse_task(line, f"{path}:{number}"))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BenchmarkDataError(f"{path}: cannot read gzip'd JSON lines: {e}") from e
    if not tasks:
        raise BenchmarkDataError(f"{path}: no tasks")
    return tasks


def parse_task(line: str, where: str) -> InfillTask:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object")
    for field in FIELDS:
        if not isinstance(record.get(field), str):
            raise BenchmarkDataError(f"{where}: field {field!r} is missing or not a string")
    return InfillTask(**{field: record[field] for field in FIELDS})


def evenly_spaced(items: list, limit: int | None) -> list:
    """A deterministic subset of `limit` items spread over the whole list (all if limit is None).

    The files are sorted by problem, so spreading the picks covers many different problems
    rather than the first few.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    return [items[i * len(items) // limit] for i in range(limit)]


@dataclass(frozen=True)
class ProblemFingerprint:
    """What identifies a HumanEval problem's text in other code: its entry point's `def`
    line and docstring, exactly as written in the problem (for decontaminating corpora)."""

    problem: str
    signature: str
    docstring: str


@cache
def problem_fingerprints() -> tuple[ProblemFingerprint, ...]:
    """One fingerprint for each of the 164 HumanEval problems."""
    sources: dict[str, tuple[str, str]] = {}
    for task in load_tasks("multi"):
        # Every task of a problem puts the same program back together.
        sources.setdefault(task.problem, (task.prompt + task.canonical_solution + task.suffix, task.entry_point))
    return tuple(fingerprint(problem, source, entry) for problem, (source, entry) in sources.items())


def fingerprint(problem: str, source: str, entry_point: str) -> ProblemFingerprint:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            lines = source.splitlines()
            signature = lines[node.lineno - 1].strip()
            # The first string statement: the docstring (HumanEval/115 has an import before it).
            strings = [
                s
                for s in node.body
                if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
            ]
            if not strings:
                raise BenchmarkDataError(f"{problem}: entry point {entry_point!r} has no docstring")
            # As written (quotes and escapes included), so it can be found in raw files.
            docstring = ast.get_source_segment(source, strings[0]) or ""
            return ProblemFingerprint(problem, signature, docstring)
    raise BenchmarkDataError(f"{problem}: entry point {entry_point!r} not found in the problem's code")
