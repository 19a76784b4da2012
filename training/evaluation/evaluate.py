"""The benchmark loops: generate each middle, score it, collect one result per task.

Generation runs in this process (one request at a time, the engine's KV cache reused
between tasks that share a prompt prefix); HumanEval programs run in the sandbox's
worker pool meanwhile, so execution overlaps generation.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from tqdm import tqdm

from engine.session import PromptTooLong
from training.evaluation.completers import Completer, Generated, StopRule
from training.evaluation.humaneval import InfillTask, check_program
from training.evaluation.repo_lines import LineTask, line_matches
from training.evaluation.sandbox import ExecResult, ProgramRunner


@dataclass
class TaskResult:
    benchmark: str
    """"single", "multi" or "repo"."""
    fmt: str
    """"psm", "spm", or "any" for baselines (they ignore the prompt format)."""
    task_id: str
    passed: bool
    status: str
    completion: str
    generated_tokens: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


def evaluate_humaneval(
    tasks: list[InfillTask],
    benchmark: str,
    fmt: str,
    completer: Completer,
    rule: StopRule,
    runner: ProgramRunner,
    bar: tqdm,
) -> list[TaskResult]:
    pending: list[tuple[TaskResult, Future[ExecResult] | None]] = []
    for task in tasks:
        try:
            generated = completer.complete(task.prompt, task.suffix, fmt, rule)
        except PromptTooLong as e:
            pending.append((TaskResult(benchmark, fmt, task.task_id, False, f"prompt too long: {e}", ""), None))
            bar.update()
            continue
        result = result_for(benchmark, fmt, task.task_id, generated)
        pending.append((result, runner.submit(check_program(task, generated.completion), on_done=bar.update)))
    results = []
    for result, future in pending:
        if future is not None:
            outcome = future.result()
            result.passed, result.status = outcome.passed, outcome.status
        results.append(result)
    return results


def evaluate_repo_lines(
    tasks: list[LineTask], fmt: str, completer: Completer, rule: StopRule, bar: tqdm
) -> list[TaskResult]:
    """Exact match of what the editor would show (the server's prompt, budgets and post-processing)."""
    results = []
    for task in tasks:
        generated = completer.complete_line(task, fmt, rule)
        result = result_for("repo", fmt, task.task_id, generated)
        result.passed = line_matches(generated.completion, task)
        result.status = "match" if result.passed else "no match"
        results.append(result)
        bar.update()
    return results


def result_for(benchmark: str, fmt: str, task_id: str, generated: Generated) -> TaskResult:
    return TaskResult(
        benchmark,
        fmt,
        task_id,
        False,
        "",
        generated.completion,
        generated.tokens,
        generated.seconds,
        generated.stop_reason,
    )
