"""One completion, on the inference thread: prompt, generation, post-processing.

Runs off the event loop: tokenizing the window and generating both take CPU. The task
carries an immutable snapshot of everything it needs, so the event loop may go on
changing documents meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lsp.loading import usable_lengths
from lsp.postprocess import CursorContext, Edit, enough, finish, wants_multiline
from lsp.prompt import CONTEXT_TIME_SHARE, ContextSource, SnippetCache, build_prompt, fit_budgets
from lsp.settings import Settings

if TYPE_CHECKING:
    from engine.session import InfillEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionTask:
    """A snapshot of one request."""

    uri: str
    text: str
    """The document (or, with a selected completion item, the document as if it were accepted)."""
    offset: int
    """The cursor, as an index into text."""
    line: int
    """The cursor's line number."""
    language_id: str
    cursor: CursorContext
    sources: tuple[ContextSource, ...]
    """Other open documents, most recently used first."""
    settings: Settings
    owner: Hashable = None
    """The session (connection) that asked: its jobs never cancel, join or see another's."""

    @property
    def key(self) -> tuple[Hashable, str]:
        """What the worker schedules by and the engine keeps a KV-cache slot for: one document of one session."""
        return (self.owner, self.uri)


@dataclass
class CompletionOutcome:
    edit: Edit | None = None
    """What to show; None for nothing."""
    raw: str = ""
    """The model's text before post-processing (for logs and tests)."""
    stats: Any = None
    """engine.generate.GenerationStats of the model call, if one was made."""
    cancelled: bool = False
    """Superseded by a newer request, or cancelled by the client."""
    error: str | None = None


class Completer:
    """Turns tasks into outcomes with a loaded engine (one thread uses it at a time)."""

    def __init__(self) -> None:
        self.snippets = SnippetCache()

    def complete(self, engine: InfillEngine, task: CompletionTask, cancel: threading.Event) -> CompletionOutcome:
        from engine.generate import SamplingParams
        from engine.session import PromptTooLong

        settings, p = task.settings, task.settings.prompt
        tokenizer = engine.tokenizer
        max_new_tokens, prompt_tokens = usable_lengths(settings, engine)
        prefix_tokens, suffix_tokens, context_tokens = fit_budgets(
            p.prefix_tokens, p.suffix_tokens, p.context_tokens, prompt_tokens
        )
        started = time.perf_counter()
        prompt = build_prompt(
            task.text,
            task.offset,
            task.line,
            task.language_id,
            task.sources[: p.context_files],
            lambda s: len(tokenizer.encode(s)),
            prefix_tokens,
            suffix_tokens,
            context_tokens,
            self.snippets,
            context_deadline=started + CONTEXT_TIME_SHARE * settings.time_budget_ms / 1000,
        )
        multiline = wants_multiline(task.cursor, settings.multiline)
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=settings.temperature,
            stop=() if multiline else ("\n",),
            time_budget_s=settings.time_budget_ms / 1000,
        )
        streamed: list[str] = []
        done = threading.Event()  # post-processing would cut what is there: stop generating
        # The engine checks the budget between decode steps only; checking it here too also
        # stops a long prefill between chunks (what was prefilled stays in the KV cache).
        deadline = started + params.time_budget_s

        def on_text(piece: str) -> None:
            streamed.append(piece)
            if enough("".join(streamed), task.cursor, multiline, settings.max_lines):
                done.set()

        try:
            completion = engine.complete(
                prompt.prefix,
                prompt.suffix,
                fmt=p.format,
                params=params,
                cancel=lambda: cancel.is_set() or done.is_set() or time.perf_counter() > deadline,
                on_text=on_text,
                session=task.key,  # each document keeps its KV-cache slot
            )
        except PromptTooLong as e:
            return CompletionOutcome(error=str(e))
        if log.isEnabledFor(logging.DEBUG):
            s = completion.stats
            log.debug(
                "%s: prompt %d tokens (context %d chars), %d reused, %d prefilled in %.0f ms, %d generated in "
                "%.0f ms, stopped at %s",
                task.uri, s.prompt_tokens, len(prompt.context), s.reused_tokens, s.prefilled_tokens,
                s.prefill_s * 1000, s.generated_tokens, s.decode_s * 1000, s.stop_reason,
            )  # fmt: skip
        outcome = CompletionOutcome(raw=completion.text, stats=completion.stats)
        if cancel.is_set():
            outcome.cancelled = True
            return outcome
        outcome.edit = finish(completion.text, task.cursor, multiline, settings.max_lines)
        return outcome
