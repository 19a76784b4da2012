"""Scores from task results: a table for people, JSON for the README and for comparisons."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from training.evaluation.evaluate import TaskResult
from training.evaluation.humaneval import BENCHMARK_NAMES, PUBLISHED_CODE_LLAMA_7B

METRICS = {"single": "pass@1", "multi": "pass@1", "repo": "exact match"}
NAMES = {**BENCHMARK_NAMES, "repo": "repo lines"}


@dataclass
class Score:
    benchmark: str
    fmt: str
    metric: str
    tasks: int
    passed: int
    percent: float
    published_code_llama_7b: float | None
    """Code Llama 7B's published pass@1 for the same benchmark and format (None: none published)."""
    generated_tokens: int
    generation_s: float


def summarize(results: list[TaskResult]) -> list[Score]:
    groups: dict[tuple[str, str], list[TaskResult]] = defaultdict(list)
    for result in results:
        groups[(result.benchmark, result.fmt)].append(result)
    scores = []
    for (benchmark, fmt), group in groups.items():
        passed = sum(r.passed for r in group)
        scores.append(
            Score(
                benchmark,
                fmt,
                METRICS[benchmark],
                len(group),
                passed,
                round(100.0 * passed / len(group), 2),
                PUBLISHED_CODE_LLAMA_7B.get((benchmark, fmt)),
                sum(r.generated_tokens for r in group),
                round(sum(r.seconds for r in group), 3),
            )
        )
    return scores


def published_cell(score: Score) -> str:
    if score.published_code_llama_7b is not None:
        return f"{score.published_code_llama_7b:.1f}"
    psm = PUBLISHED_CODE_LLAMA_7B.get((score.benchmark, "psm"))
    spm = PUBLISHED_CODE_LLAMA_7B.get((score.benchmark, "spm"))
    return f"{psm:.1f} PSM / {spm:.1f} SPM" if psm is not None and spm is not None else "-"


def format_table(scores: list[Score], title: str) -> str:
    header = ("benchmark", "format", "metric", "tasks", "passed", "score %", "Code Llama 7B % (paper)")
    rows = [header] + [
        (
            NAMES[s.benchmark],
            s.fmt.upper(),
            s.metric,
            str(s.tasks),
            str(s.passed),
            f"{s.percent:.1f}",
            published_cell(s),
        )
        for s in scores
    ]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    lines = [title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, settings: dict, scores: list[Score], results: list[TaskResult]) -> None:
    report = {
        "settings": settings,
        "scores": [asdict(s) for s in scores],
        "tasks": [asdict(r) for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
