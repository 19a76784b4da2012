"""Who fills in the middle: a model through the engine, or a trivial baseline.

`StopRule` is the benchmark's decoding protocol (see the package docstring for why):
greedy; single-line tasks stop at the first newline and the completion is that one line
plus "\\n"; multi-line tasks run until <EOT> or the token limit and are used as generated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.options import CompletionSettings, PromptSettings
from engine.pipeline import Pipeline, Snapshot
from engine.sampling import SamplingParams
from engine.session import InfillEngine
from training.evaluation.repo_lines import LineTask

SINGLE_LINE_MAX_NEW_TOKENS = 128
MULTI_LINE_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class StopRule:
    max_new_tokens: int
    single_line: bool

    def params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=0.0, stop=("\n",) if self.single_line else ()
        )

    def finish(self, text: str) -> str:
        """The completion to score, from the generated text."""
        if self.single_line:
            # The middle of a single-line task is exactly one line with its newline.
            return text.split("\n", 1)[0] + "\n"
        return text


@dataclass(frozen=True)
class Generated:
    completion: str
    tokens: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


class Completer(Protocol):
    name: str

    def complete(self, prefix: str, suffix: str, fmt: str, rule: StopRule) -> Generated: ...

    def complete_line(self, task: LineTask, fmt: str, rule: StopRule) -> Generated: ...


class ModelCompleter:
    """Greedy infilling with the engine. Raises engine.session.PromptTooLong when the prompt
    does not fit in the KV cache."""

    def __init__(self, engine: InfillEngine, token_healing: bool = False, name: str = "model") -> None:
        self.engine, self.token_healing, self.name = engine, token_healing, name
        self.pipeline = Pipeline(engine)

    def complete_line(self, task: LineTask, fmt: str, rule: StopRule) -> Generated:
        """What the editor would show at the task's cursor: the server's prompt (default budgets,
        snippets of the task's neighbouring files), generation, and post-processing."""
        settings = CompletionSettings(
            max_tokens=rule.max_new_tokens, multiline="never", time_budget_ms=120_000, prompt=PromptSettings(format=fmt)
        )
        language = "python" if task.task_id.split(":", 1)[0].endswith((".py", ".pyi")) else ""
        snapshot = Snapshot(task.text, len(task.prefix), language, task.sources)
        done = self.pipeline.complete(snapshot, settings, token_healing=True)
        shown = done.edit.text if done.edit is not None else ""
        return Generated(shown, done.stats.generated_tokens, done.stats.total_s, done.stats.stop_reason)

    def complete(self, prefix: str, suffix: str, fmt: str, rule: StopRule) -> Generated:
        result = self.engine.complete(prefix, suffix, fmt=fmt, token_healing=self.token_healing, params=rule.params())
        stats = result.stats
        return Generated(rule.finish(result.text), stats.generated_tokens, stats.total_s, stats.stop_reason)


def empty_middle(prefix: str, suffix: str) -> str:
    return ""


def repeat_previous_line(prefix: str, suffix: str) -> str:
    """The last non-blank line of the prefix, indentation and all, once more."""
    for line in reversed(prefix.split("\n")):
        if line.strip():
            return line + "\n"
    return ""


BASELINES: dict[str, Callable[[str, str], str]] = {"empty": empty_middle, "repeat-line": repeat_previous_line}


class BaselineCompleter:
    """A model-free middle; it does not depend on the prompt format or the stop rule."""

    def __init__(self, name: str) -> None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
        self.name = f"baseline:{name}"
        self._middle = BASELINES[name]

    def complete(self, prefix: str, suffix: str, fmt: str, rule: StopRule) -> Generated:
        return Generated(self._middle(prefix, suffix))

    def complete_line(self, task: LineTask, fmt: str, rule: StopRule) -> Generated:
        return self.complete(task.prefix, task.suffix, fmt, rule)
