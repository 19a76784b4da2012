"""The infilling engine: prompts in, middles out, reusing the KV cache across keystrokes.

Each cache slot remembers the tokens whose keys/values it holds; only the tokens of a
new prompt after its longest common prefix with the slot are prefilled. Typing at the
end of an SPM prompt therefore prefills a token or two, and switching between two files
keeps both warm (one slot each). A caller that knows which document a request is for
(the server) passes it as `session`, and each session keeps its slot; otherwise the
slot sharing the longest prefix is used, or the least recently used one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterator

from engine.backend import Backend, Cancel, Completion, PromptTooLong
from engine.compiled import (
    DecodeReport,
    DecodeStep,
    build_compiled_decode,
    use_private_compile_cache,
    worth_trying,
)
from engine.generate import GenerationStats, SamplingParams, TokenStream
from engine.middle_text import MiddleText
from engine.model import KVCache, Transformer
from engine.options import COMPILE_MODES, COMPILE_THREAD
from engine.prompts import InfillPrompt
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

__all__ = ["Cancel", "Completion", "InfillEngine", "PromptTooLong", "Stream"]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Stream:
    """One completion being generated, as an iterator of text pieces (one per generated token,
    "" while nothing new can be shown yet).

    The engine stops at <EOT>, at the token limit, at the deadline (`started` +
    `params.time_budget_s`, the one deadline of the request), at a stop string, and when
    `cancel()` turns true (also between prefill chunks). A caller that has enough calls
    `stop("post_process")` (or any reason) and breaks out; leaving the `with` block ends the
    generation and records what the KV-cache slot now holds. Use it only as a context
    manager: it holds the engine for its whole life.
    """

    def __init__(
        self,
        engine: InfillEngine,
        prompt: InfillPrompt,
        params: SamplingParams,
        session: Hashable | None,
        cancel: Callable[[], bool],
        started: float,
    ) -> None:
        self.engine, self.prompt, self.params, self.session, self.cancel = engine, prompt, params, session, cancel
        self.started = started
        self.deadline = started + params.time_budget_s if params.time_budget_s is not None else math.inf
        self.middle = MiddleText(engine.tokenizer, prompt.healing, params.stop)
        self.stats = GenerationStats(prompt_tokens=len(prompt.tokens))
        self._asked: str | None = None
        self._tokens: TokenStream | None = None
        self._slot = 0
        self._reuse = 0
        self._closed = False

    @property
    def generated(self) -> list[int]:
        """The tokens generated so far."""
        return self._tokens.tokens if self._tokens is not None else []

    @property
    def text(self) -> str:
        """The middle so far (healing removed, cut at a stop string)."""
        return self.middle.text

    def stop(self, reason: str) -> None:
        """End the generation at the next step (or now, when the caller breaks out): e.g. "post_process"."""
        self._asked = self._asked or reason

    def __enter__(self) -> Stream:
        tokens = self.prompt.tokens
        if len(tokens) >= self.engine.max_seq_len:
            raise PromptTooLong(
                f"the prompt has {len(tokens)} tokens but the KV cache holds {self.engine.max_seq_len}: "
                "lower the prompt budget or raise max_seq_len"
            )
        self.engine._lock.acquire()
        try:
            self._slot, self._reuse = self.engine._pick_slot(tokens, self.session)
            # Forget the slot first: if anything below fails, its contents are unknown.
            self.engine.slot_tokens[self._slot] = tokens[: self._reuse]
            self._tokens = TokenStream(
                self.engine.model,
                self.engine.tokenizer,
                self.engine.cache,
                self._slot,
                self.params,
                self.prompt.healing,
                lookup=tokens if self.params.prompt_lookup else None,
                decoder=self.engine.compiled,
            )
        except BaseException:
            self.engine._lock.release()
            raise
        self.stats.reused_tokens, self.stats.slot = self._reuse, self._slot
        return self

    def __iter__(self) -> Iterator[str]:
        assert self._tokens is not None, "use `with engine.stream(...) as stream:`"
        t0 = time.perf_counter()
        should_stop = lambda: self.cancel() or time.perf_counter() >= self.deadline  # noqa: E731
        self.stats.prefilled_tokens = self._tokens.prefill(self.prompt.tokens[self._reuse :], self._reuse, should_stop)
        self.stats.prefill_s = time.perf_counter() - t0
        if self._reuse + self.stats.prefilled_tokens < len(self.prompt.tokens):
            self._asked = "cancelled" if self.cancel() else "time_budget"
            return
        t0 = time.perf_counter()
        try:
            for token in self._tokens:
                piece = self.middle.add(token)
                if self.middle.stopped:
                    self._asked = "stop_string"
                yield piece
                if self._asked:
                    return
                if len(self._tokens.tokens) >= self.params.max_new_tokens:
                    self._asked = "max_tokens"
                elif time.perf_counter() >= self.deadline:
                    self._asked = "time_budget"
                elif self.cancel():
                    self._asked = "cancelled"
                if self._asked:
                    return
        finally:
            self.stats.decode_s = time.perf_counter() - t0

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Record what the slot holds, fill in the stats, release the engine (idempotent)."""
        if self._closed or self._tokens is None:
            return
        self._closed = True
        tokens, gen = self.prompt.tokens, self._tokens
        try:
            if self._reuse + self.stats.prefilled_tokens == len(tokens):
                self.engine.slot_tokens[self._slot] = tokens + gen.tokens[: gen.fed]
            else:  # stopped during prefill: what was written is still good
                self.engine.slot_tokens[self._slot] = tokens[: self._reuse + self.stats.prefilled_tokens]
            self.stats.generated_tokens = len(gen.tokens)
            self.stats.drafted_tokens, self.stats.accepted_tokens = gen.drafted, gen.accepted
            self.stats.stop_reason = gen.stop_reason or self._asked or "cancelled"
        finally:
            self.engine._lock.release()


class InfillEngine(Backend):
    """A loaded model plus its KV cache; one request at a time (calls are serialised)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_seq_len: int = 4096, cache_slots: int = 2):
        tokenizer.require_infilling()
        if tokenizer.vocab_size > model.args.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model only "
                f"{model.args.vocab_size} embeddings"
            )
        self.model = model.eval()
        if model.rope_cos.shape[0] < max_seq_len:  # size RoPE once, not inside a request
            model.reset_rope(max_seq_len)
        self.tokenizer = tokenizer
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cache = KVCache(model.args, max_seq_len, cache_slots, self.device, self.dtype)
        self.slot_tokens: list[list[int]] = [[] for _ in range(cache_slots)]
        self._slot_session: list[Hashable | None] = [None] * cache_slots
        self._slot_used = [0] * cache_slots
        self._requests = 0
        self._lock = threading.Lock()
        self.compiled: DecodeStep | None = None
        """The compiled decode step once it is built and measured faster (prepare_decode)."""
        self.decode_report = DecodeReport()

    def prepare_decode(self, mode: str = "auto", background: bool = False) -> DecodeReport:
        """Compile the decode step (engine.compiled) and use it where it measures faster.

        mode: off, auto (where compiling can pay: see engine.compiled.worth_trying), on (always
        compile and use it, unless its tokens differ). background: serve with the eager step
        while compiling in a thread (on CPU only: CUDA graphs are captured before serving)."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
        reason = "off" if mode == "off" else worth_trying(self.model, self.device) if mode == "auto" else ""
        if reason:
            self.decode_report = DecodeReport("eager", reason)
            return self.decode_report
        self.decode_report = DecodeReport("compiling")
        use_private_compile_cache()  # here, not in the thread: it sets the environment
        if background and self.device.type == "cpu":
            threading.Thread(target=self._compile, args=(mode,), name=COMPILE_THREAD, daemon=True).start()
        else:
            self._compile(mode)
        return self.decode_report

    def _compile(self, mode: str) -> None:
        try:
            compiled, report = build_compiled_decode(self.model, self.max_seq_len, force=mode == "on")
        except Exception as e:  # no C++ compiler, an unsupported op...: eager still works
            log.warning("compiling the decode step failed: %s", traceback.format_exc())
            self.decode_report = DecodeReport("kept-eager", f"compiling failed: {type(e).__name__}: {e}")
            return
        with self._lock:  # between two requests
            self.compiled = compiled
        self.decode_report = report
        log.info("%s", report.describe())

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    @property
    def trained_length(self) -> int:
        return self.model.args.max_seq_len

    def open_stream(
        self, prompt: InfillPrompt, params: SamplingParams, session: Hashable | None, cancel: Callable[[], bool],
        started: float,
    ) -> Stream:  # fmt: skip
        return Stream(self, prompt, params, session, cancel, started)

    def _pick_slot(self, tokens: list[int], session: Hashable | None) -> tuple[int, int]:
        """(slot, tokens to reuse)."""
        slots = range(len(self.slot_tokens))
        least_recent = min(slots, key=lambda i: self._slot_used[i])
        shared = [common_prefix_length(cached, tokens) for cached in self.slot_tokens]
        if session is not None:
            best = self._slot_session.index(session) if session in self._slot_session else least_recent
        else:
            # Without a session, a slot sharing little is likely another file's: keep it warm.
            best = max(slots, key=lambda i: (shared[i], self._slot_used[i]))
            if shared[best] < max(4, len(tokens) // 8):
                best = least_recent
        self._requests += 1
        self._slot_used[best] = self._requests
        self._slot_session[best] = session
        # Prefill at least one token: its logits start the generation.
        return best, min(shared[best], len(tokens) - 1)

    def reset_cache(self) -> None:
        with self._lock:
            self.slot_tokens = [[] for _ in self.slot_tokens]
            self._slot_session = [None for _ in self._slot_session]

    def cache_bytes(self) -> int:
        return self.cache.nbytes()
