"""One completion, from a snapshot of a document to the edit an editor shows (torch-free).

    Snapshot (text, cursor, other documents)
      -> prompt token ids within the budgets (engine.context), each part tokenized once
      -> generation (the engine's stream), stopped as soon as post-processing would cut
      -> the post-processed edit (engine.postprocess)

Every path that completes code goes through here, so each sees what the editor shows: the
language server (lsp/completer.py), `codellama-lsp complete`, the repository benchmark of
`codellama-train eval` and `fit`'s held-out exact match. This module imports no torch: it
drives whatever backend it is given (engine.backend: the model in process, or a remote server).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property

from engine.backend import Backend
from engine.context import CONTEXT_TIME_SHARE, ContextSource, PromptParts, SnippetCache, build_prompt, fit_budgets
from engine.options import CompletionSettings
from engine.postprocess import CursorContext, Edit, enough, finish, wants_multiline
from engine.prompts import InfillPrompt, infill_prompt
from engine.sampling import GenerationStats, SamplingParams

log = logging.getLogger(__name__)

PROMPT_MARGIN = 16
"""Special tokens of the infilling layout, plus slack for the budgets' estimates."""
LINE_END = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class Snapshot:
    """A document and a cursor in it, frozen for one request: the one picture of "the cursor"
    that the prompt and post-processing share."""

    text: str
    offset: int
    """The cursor, as an index into text."""
    language_id: str = ""
    sources: tuple[ContextSource, ...] = ()
    """What may lend snippets, best first (the caller chooses: the server gives its recent places,
    then prompt.contextFiles other documents)."""
    known_line: int | None = None
    """The cursor's line number when the caller knows it (saves a scan of a long text)."""

    @cached_property
    def line(self) -> int:
        return self.known_line if self.known_line is not None else self.text.count("\n", 0, self.offset)

    @cached_property
    def line_start(self) -> int:
        return max(self.text.rfind("\n", 0, self.offset), self.text.rfind("\r", 0, self.offset)) + 1

    @cached_property
    def line_end(self) -> int:
        """Where the cursor's line ends (before its line break)."""
        match = LINE_END.search(self.text, self.offset)
        return match.start() if match else len(self.text)

    @cached_property
    def context(self) -> CursorContext:
        return CursorContext.around(self.text, self.offset, self.line_start, self.line_end)


@dataclass
class Plan:
    """What one completion will run: the prompt, the sampling, the post-processing mode."""

    prompt: InfillPrompt
    parts: PromptParts
    params: SamplingParams
    multiline: bool


@dataclass
class Outcome:
    edit: Edit | None = None
    """What to show; None for nothing."""
    raw: str = ""
    """The model's middle before post-processing."""
    stats: GenerationStats = field(default_factory=GenerationStats)


def usable_lengths(settings: CompletionSettings, engine: Backend) -> tuple[int, int]:
    """(tokens to generate, prompt tokens) that fit both the model's trained length and the KV cache."""
    usable = min(engine.trained_length, engine.max_seq_len)
    new_tokens = min(settings.max_tokens, usable // 2)
    return new_tokens, max(0, usable - new_tokens - PROMPT_MARGIN)


def prompt_budget_problem(settings: CompletionSettings, engine: Backend) -> str | None:
    """What the settings ask for beyond what the model can use (they are scaled down), or None."""
    p = settings.prompt
    asked = p.prefix_tokens + p.suffix_tokens + p.context_tokens
    new_tokens, prompt_tokens = usable_lengths(settings, engine)
    if asked <= prompt_tokens and new_tokens == settings.max_tokens:
        return None
    trained = engine.trained_length
    return (
        f"prompt.prefixTokens + suffixTokens + contextTokens = {asked:,} and maxTokens = {settings.max_tokens:,} "
        f"ask for more than this model can use: it was trained on {trained:,} positions; completions use "
        f"{prompt_tokens:,} prompt tokens (the three budgets scaled down together) and at most {new_tokens:,} new ones"
    )


class Pipeline:
    """Completions with one engine (one request at a time, as the engine serves them)."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine
        self.snippets = SnippetCache()

    def plan(
        self, snap: Snapshot, settings: CompletionSettings, started: float | None = None, token_healing: bool = True
    ) -> Plan:
        """The prompt for a snapshot, within the budgets the model can take."""
        started = time.perf_counter() if started is None else started
        p = settings.prompt
        max_new_tokens, prompt_tokens = usable_lengths(settings, self.engine)
        prefix_tokens, suffix_tokens, context_tokens = fit_budgets(
            p.prefix_tokens, p.suffix_tokens, p.context_tokens, prompt_tokens
        )
        parts = build_prompt(
            snap.text,
            snap.offset,
            snap.line,
            snap.language_id,
            snap.sources,
            self.engine.tokenizer,
            prefix_tokens,
            suffix_tokens,
            context_tokens,
            self.snippets,
            context_deadline=started + CONTEXT_TIME_SHARE * settings.time_budget_ms / 1000,
        )
        tok = self.engine.tokenizer
        fmt = self.engine.layout(p.format, token_healing)
        prompt = infill_prompt(tok, parts.prefix, parts.prefix_ids, parts.suffix_ids, fmt, token_healing)
        multiline = wants_multiline(snap.context, settings.multiline)
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=settings.temperature,
            stop=() if multiline else ("\n",),
            time_budget_s=settings.time_budget_ms / 1000,
        )
        return Plan(prompt, parts, params, multiline)

    def complete(
        self,
        snap: Snapshot,
        settings: CompletionSettings,
        *,
        key: Hashable | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        started: float | None = None,
        raw: bool = False,
        token_healing: bool = True,
        sampling: dict | None = None,
    ) -> Outcome:
        """The edit for a snapshot. key: what the engine keeps a KV-cache slot for (a document);
        started: when the request arrived (the time budget counts from there); raw: no
        post-processing and no stop at the line's end (the model's middle, to the token limit
        or <EOT>); sampling: SamplingParams fields to override (seed, top_p, stop)."""
        started = time.perf_counter() if started is None else started
        plan = self.plan(snap, settings, started, token_healing)
        if raw:
            plan.params = dataclasses.replace(plan.params, stop=())
        if sampling:
            plan.params = dataclasses.replace(plan.params, **sampling)
        with self.engine.stream(plan.prompt, plan.params, session=key, cancel=cancel, started=started) as stream:
            for _ in stream:
                if not raw and enough(stream.text, snap.context, plan.multiline, settings.max_lines):
                    stream.stop("post_process")  # what follows would be cut: stop generating
                    break
        s = stream.stats
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "prompt %d tokens (context %d chars), %d reused, %d prefilled in %.0f ms, %d generated in "
                "%.0f ms, stopped at %s",
                s.prompt_tokens, len(plan.parts.context), s.reused_tokens, s.prefilled_tokens,
                s.prefill_s * 1000, s.generated_tokens, s.decode_s * 1000, s.stop_reason,
            )  # fmt: skip
        edit = None if raw else finish(stream.text, snap.context, plan.multiline, settings.max_lines)
        return Outcome(edit, stream.text, s)
