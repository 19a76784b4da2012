"""One completion, on the inference thread: the request's snapshot through engine.pipeline.

Runs off the event loop: tokenizing the window and generating both take CPU. The task
carries an immutable snapshot of everything it needs, so the event loop may go on
changing documents meanwhile.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.pipeline import Pipeline, Snapshot
from engine.postprocess import Edit
from lsp.settings import Settings

if TYPE_CHECKING:
    from engine.session import InfillEngine

ALTERNATIVE_TEMPERATURE = 0.8
"""Sampling temperature of the candidates after the first (greedy) one."""


@dataclass(frozen=True)
class CompletionTask:
    """One request: which document of which session, the snapshot, the settings it was made with."""

    uri: str
    snapshot: Snapshot
    """The document (or, with a selected completion item, the document as if it were accepted) and the cursor."""
    settings: Settings
    owner: Hashable = None
    """The session (connection) that asked: its jobs never cancel, join or see another's."""
    started: float | None = None
    """When the request arrived (perf_counter): the time budget counts from there."""
    candidates: int = 1
    """Completions wanted: the greedy one, then sampled ones (the editor's "next suggestion")."""

    @property
    def key(self) -> tuple[Hashable, str]:
        """What the worker schedules by and the engine keeps a KV-cache slot for: one document of one session."""
        return (self.owner, self.uri)


@dataclass
class CompletionOutcome:
    edit: Edit | None = None
    """What to show; None for nothing."""
    alternatives: list[Edit] = field(default_factory=list)
    """Further candidates, distinct from edit and each other after post-processing."""
    raw: str = ""
    """The model's text before post-processing (for logs and tests)."""
    stats: Any = None
    """engine.sampling.GenerationStats of the model call, if one was made."""
    cancelled: bool = False
    """Superseded by a newer request, or cancelled by the client."""
    error: str | None = None


class Completer:
    """Turns tasks into outcomes with a loaded engine (one thread uses it at a time)."""

    def __init__(self) -> None:
        self._pipeline: Pipeline | None = None

    def complete(self, engine: InfillEngine, task: CompletionTask, cancel: threading.Event) -> CompletionOutcome:
        from engine.backend import PromptTooLong
        from engine.wire import BackendError

        if self._pipeline is None or self._pipeline.engine is not engine:
            self._pipeline = Pipeline(engine)  # a new model: new snippet token ids too
        snap, settings = task.snapshot, task.settings
        try:
            done = self._pipeline.complete(snap, settings, key=task.key, cancel=cancel, started=task.started)
            edits = [done.edit] if done.edit is not None else []
            # Alternatives: sampled from the same prompt, which the KV cache holds already (one
            # token prefilled each), within the request's one time budget.
            sampled = dataclasses.replace(settings, temperature=max(settings.temperature, ALTERNATIVE_TEMPERATURE))
            for seed in range(1, task.candidates):
                if cancel.is_set():
                    break
                other = self._pipeline.complete(
                    snap, sampled, key=task.key, cancel=cancel, started=task.started, sampling={"seed": seed}
                )
                if other.edit is not None and other.edit.text not in {e.text for e in edits}:
                    edits.append(other.edit)
        except (PromptTooLong, BackendError) as e:
            return CompletionOutcome(error=str(e))
        if cancel.is_set():
            return CompletionOutcome(raw=done.raw, stats=done.stats, cancelled=True)
        return CompletionOutcome(edits[0] if edits else None, edits[1:], done.raw, done.stats)
