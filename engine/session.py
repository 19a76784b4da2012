"""The infilling engine: prompts in, middles out, reusing the KV cache across keystrokes.

Each cache slot remembers the tokens whose keys/values it holds; only the tokens of a
new prompt after its longest common prefix with the slot are prefilled. Typing at the
end of an SPM prompt therefore prefills a token or two, and switching between two files
keeps both warm (one slot each). A caller that knows which document a request is for
(the server) passes it as `session`, and each session keeps its slot; otherwise the
slot sharing the longest prefix is used, or the least recently used one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from engine.generate import GenerationStats, SamplingParams, generate_tokens
from engine.model import KVCache, Transformer
from engine.prompts import InfillFormat, InfillPrompt, build_infill_prompt
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


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class CompletionText:
    """Turns the growing list of generated tokens into text: heals, stops, streams."""

    def __init__(self, tok: Tokenizer, healing: str, stop: tuple[str, ...], on_text: Callable[[str], None] | None):
        self.tok, self.healing, self.stop, self.on_text = tok, healing, tuple(s for s in stop if s), on_text
        self.text = ""
        self.emitted = 0

    def update(self, tokens: list[int]) -> bool:
        """Decode tokens; return True when a stop string has appeared."""
        text = self.tok.decode_infilling(tokens)
        if len(text) < len(self.healing):
            return False
        text = text[len(self.healing) :]
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        stopped = bool(hits)
        self.text = text[: min(hits)] if hits else text
        self._emit(final=stopped)
        return stopped

    def _emit(self, final: bool) -> None:
        if self.on_text is None:
            return
        end = len(self.text)
        if not final:
            # Hold back an incomplete UTF-8 character and anything that may begin a stop string.
            end = len(self.text.rstrip("\ufffd"))
            for s in self.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self.emitted:
            self.on_text(self.text[self.emitted : end])
            self.emitted = end

    def finish(self) -> str:
        # Generation can stop inside a multi-byte character: drop the incomplete end.
        self.text = self.text.rstrip("\ufffd")
        self._emit(final=True)
        return self.text


class InfillEngine:
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

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

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
        """Generate the middle between prefix and suffix (session: an opaque key, e.g. one document of one editor)."""
        prompt = build_infill_prompt(self.tokenizer, prefix, suffix, fmt, token_healing)
        return self.generate(prompt, params, cancel, on_text, session)

    def generate(
        self,
        prompt: InfillPrompt,
        params: SamplingParams | None = None,
        cancel: Cancel = None,
        on_text: Callable[[str], None] | None = None,
        session: Hashable | None = None,
    ) -> Completion:
        started = time.perf_counter()
        params = params or SamplingParams()
        tokens = prompt.tokens
        if len(tokens) >= self.max_seq_len:
            raise PromptTooLong(
                f"the prompt has {len(tokens)} tokens but the KV cache holds {self.max_seq_len}: "
                "lower the prompt budget or raise max_seq_len"
            )
        cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
        text = CompletionText(self.tokenizer, prompt.healing, params.stop, on_text)
        with self._lock:
            slot, reuse = self._pick_slot(tokens, session)
            # Forget the slot first: if anything below fails, its contents are unknown.
            self.slot_tokens[slot] = tokens[:reuse]
            gen = generate_tokens(
                self.model,
                self.tokenizer,
                tokens,
                reuse,
                self.cache,
                slot,
                params,
                prompt.healing,
                cancelled,
                text.update,
                started,
            )
            prefilled = gen.stats.prefilled_tokens
            if reuse + prefilled == len(tokens):
                self.slot_tokens[slot] = tokens + gen.fed
            else:  # cancelled during prefill: what was written is still good
                self.slot_tokens[slot] = tokens[: reuse + prefilled]
        return Completion(text.finish(), gen.stats)

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
