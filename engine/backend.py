"""What the pipeline drives: something that streams the middle for an infilling prompt.

Two kinds (torch-free here, so the server can hold either before torch is loaded):
- engine.session.InfillEngine: the model in this process, with its own KV cache;
- engine.remote.RemoteEngine: a shared inference server (vLLM, llama.cpp's server) that
  gets our exact prompt token ids over HTTP and keeps its own prefix cache.

Both give `stream(prompt, params, ...)`: a context manager that iterates over text pieces
and has `.text`, `.stats`, `.stop(reason)` and `.middle` (engine.session.Stream).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from engine.prompts import InfillFormat, InfillPrompt, build_infill_prompt
from engine.sampling import GenerationStats, SamplingParams
from engine.tokenizer import Tokenizer

Cancel = Callable[[], bool] | threading.Event | None


class PromptTooLong(ValueError):
    """The prompt does not fit in the KV cache."""


@dataclass
class Completion:
    text: str
    """The generated middle, healed characters removed, cut at a stop string."""
    stats: GenerationStats
    """Tokens reused, prefilled and generated; timings; why generation stopped."""


def as_callable(cancel: Cancel) -> Callable[[], bool]:
    return cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))


class Backend:
    """The common surface; subclasses set tokenizer and implement stream, max_seq_len, trained_length."""

    tokenizer: Tokenizer
    can_heal: bool = True
    """Whether token healing can constrain the first tokens; if not, SPM prompts are sent as PSM."""

    def layout(self, fmt: InfillFormat, token_healing: bool) -> InfillFormat:
        """The prompt layout to send: SPM wants token healing; a backend that cannot constrain
        the first token gets PSM, the layout that needs none."""
        return "psm" if fmt == "spm" and token_healing and not self.can_heal else fmt

    @property
    def max_seq_len(self) -> int:
        """Positions one sequence may use: prompt plus generated tokens."""
        raise NotImplementedError

    @property
    def trained_length(self) -> int:
        """Positions the model was trained on (prompts past it are out of its distribution)."""
        raise NotImplementedError

    def reset_cache(self) -> None:
        """Forget what the KV cache holds (a remote server's cache is its own)."""

    def stream(
        self,
        prompt: InfillPrompt,
        params: SamplingParams | None = None,
        *,
        session: Hashable | None = None,
        cancel: Cancel = None,
        started: float | None = None,
    ) -> Any:
        """Generation as an iterator of text pieces (engine.session.Stream's interface). `started`
        (perf_counter) is when the request began: the time budget counts from there; session: an
        opaque key (one document of one editor) that keeps its KV-cache slot where there is one."""
        params = params or SamplingParams()
        return self.open_stream(prompt, params, session, as_callable(cancel), started or time.perf_counter())

    def open_stream(
        self, prompt: InfillPrompt, params: SamplingParams, session: Hashable | None, cancel: Callable[[], bool],
        started: float,
    ) -> Any:  # fmt: skip
        raise NotImplementedError

    def complete(
        self,
        prefix: str,
        suffix: str,
        *,
        fmt: InfillFormat = "spm",
        token_healing: bool = True,
        params: SamplingParams | None = None,
        cancel: Cancel = None,
        on_text: Callable[[str], None] | None = None,
        session: Hashable | None = None,
    ) -> Completion:
        """Generate the middle between prefix and suffix, to the end (session: an opaque key,
        e.g. one document of one editor, that keeps its KV-cache slot)."""
        prompt = build_infill_prompt(self.tokenizer, prefix, suffix, self.layout(fmt, token_healing), token_healing)
        return self.generate(prompt, params, cancel, on_text, session)

    def generate(
        self,
        prompt: InfillPrompt,
        params: SamplingParams | None = None,
        cancel: Cancel = None,
        on_text: Callable[[str], None] | None = None,
        session: Hashable | None = None,
    ) -> Completion:
        """The whole completion of a prompt (`stream` gives it piece by piece)."""
        with self.stream(prompt, params, session=session, cancel=cancel, started=time.perf_counter()) as stream:
            for piece in stream:
                if piece and on_text is not None:
                    on_text(piece)
        last = stream.middle.finish()
        if last and on_text is not None:
            on_text(last)
        return Completion(stream.middle.text, stream.stats)
