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
from engine.window import cursor_window
from training.evaluation.completers import Completer, Generated, StopRule
from training.evaluation.humaneval import InfillTask, check_program
from training.evaluation.repo_lines import LineTask, line_matches
from training.evaluation.sandbox import ExecResult, ProgramRunner

# Repository files can be long: start from the server's default window (chars) and halve
# it while the prompt does not fit the model's context.
REPO_WINDOW_CHARS = (6000, 2000)
REPO_WINDOW_TRIES = 6


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
    results = []
    for task in tasks:
        generated = complete_in_window(completer, task, fmt, rule)
        if generated is None:
            result = TaskResult("repo", fmt, task.task_id, False, "prompt too long", "")
        else:
            result = result_for("repo", fmt, task.task_id, generated)
            result.passed = line_matches(generated.completion, task)
            result.status = "match" if result.passed else "no match"
        results.append(result)
        bar.update()
    return results


def complete_in_window(completer: Completer, task: LineTask, fmt: str, rule: StopRule) -> Generated | None:
    document = task.prefix + task.suffix
    prefix_chars, suffix_chars = REPO_WINDOW_CHARS
    for _ in range(REPO_WINDOW_TRIES):
        window = cursor_window(document, len(task.prefix), prefix_chars, suffix_chars)
        try:
            return completer.complete(window.prefix, window.suffix, fmt, rule)
        except PromptTooLong:
            prefix_chars, suffix_chars = prefix_chars // 2, suffix_chars // 2
    return None


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
