"""Generation as small functions: prefill, decode one token, sample.

`TokenStream` drives them for one prompt against one KV-cache slot, as an iterator of
tokens that ends at <EOT> (Code Llama's end of infilling) or EOS; its caller stops it for
every other reason by no longer iterating. The session in `engine.session` decides which
part of the prompt needs prefilling at all, and owns the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import torch

from engine.healing import HealingConstraint
from engine.lookup import DRAFT_GROWTH, DRAFT_MAX, DRAFT_START, PromptLookup
from engine.model import KVCache, Transformer
from engine.sampling import GenerationStats, SamplingParams
from engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from engine.compiled import DecodeStep

__all__ = ["GenerationStats", "SamplingParams", "TokenStream", "decode_one_token", "prefill", "sample"]

# Long prompts are prefilled in chunks: it bounds the attention-mask memory and lets a
# cancelled request stop between chunks rather than after the whole prompt.
PREFILL_CHUNK = 512


def greedy(logits: torch.Tensor) -> int:
    """The index of the largest logit (the first, on a tie, as torch.argmax picks it)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        # numpy's argmax: 3 us against torch.argmax's 29 over Code Llama's 32,016 logits (torch's
        # dispatch), a tenth of a token's time on the shipped model with the C decode step.
        return int(logits.detach().numpy().argmax())
    return int(torch.argmax(logits))


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Pick the next token from logits (vocab,): greedy at temperature 0, else top-p."""
    if temperature <= 0:
        return greedy(logits)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    # Keep the smallest set of tokens whose probability reaches top_p (always the first).
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
    sorted_probs[outside] = 0.0
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


@torch.inference_mode()
def prefill(
    model: Transformer,
    tokens: list[int],
    start_pos: int,
    cache: KVCache,
    slot: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[torch.Tensor | None, int]:
    """Run tokens through the model from start_pos, writing their keys/values into the cache.

    Returns (logits of the last token, tokens written). If cancelled between two chunks,
    returns (None, tokens written so far): those stay valid in the cache.
    """
    device = cache.keys[0].device
    logits = None
    done = 0
    while done < len(tokens):
        if cancelled():  # also before the first chunk: a superseded request does no work
            return None, done
        chunk = tokens[done : done + PREFILL_CHUNK]
        batch = torch.tensor([chunk], dtype=torch.long, device=device)
        logits = model(batch, start_pos + done, cache, slot, last_only=True)[0, -1]
        done += len(chunk)
    return logits, done


@torch.inference_mode()
def decode_one_token(model: Transformer, token: int, pos: int, cache: KVCache, slot: int) -> torch.Tensor:
    """Logits (vocab,) for the token after `token`, which sits at position pos."""
    device = cache.keys[0].device
    return model(torch.tensor([[token]], dtype=torch.long, device=device), pos, cache, slot)[0, -1]


@torch.inference_mode()
def verify(model: Transformer, tokens: list[int], pos: int, cache: KVCache, slot: int) -> torch.Tensor:
    """Logits (len(tokens), vocab): row i predicts the token after tokens[i], which sits at pos + i."""
    device = cache.keys[0].device
    return model(torch.tensor([tokens], dtype=torch.long, device=device), pos, cache, slot)[0]


def mask_to(logits: torch.Tensor, allowed: list[int]) -> torch.Tensor:
    """logits with every token outside `allowed` at -inf."""
    masked = torch.full_like(logits, float("-inf"))
    index = torch.tensor(allowed, device=logits.device)
    masked[index] = logits[index]
    return masked


class TokenStream:
    """Generation against one KV-cache slot: prefill, then sample and feed back one token at a time.

    Iterating yields generated tokens until <EOT> or EOS (stop_reason "eot" / "eos") or a
    full cache ("cache_full"); every other reason to stop (a token limit, a deadline, a
    stop string, a cancelled request, post-processing) is the caller's, who just stops
    iterating. `fed` counts the generated tokens whose keys/values are in the cache: all
    but the last one yielded, until the next step feeds it.
    """

    def __init__(
        self,
        model: Transformer,
        tok: Tokenizer,
        cache: KVCache,
        slot: int,
        params: SamplingParams,
        healing: str = "",
        lookup: list[int] | None = None,
        decoder: DecodeStep | None = None,
    ) -> None:
        """lookup: the whole prompt, to draft from (speculative decoding, greedy only); None: off.
        decoder: the compiled decode step, where it is in use (engine.compiled); None: eager."""
        self.model, self.tok, self.cache, self.slot, self.params = model, tok, cache, slot, params
        self.decoder = decoder
        self.lookup = PromptLookup(lookup) if lookup is not None and params.temperature <= 0 else None
        self.draft_size = DRAFT_START
        """Adapts: grows while drafts are kept whole, shrinks to what was kept when one is cut."""
        self.drafted = self.accepted = 0
        """Draft tokens proposed and kept (prompt lookup's acceptance rate)."""
        self.constraint = HealingConstraint(tok, healing) if healing else None
        self.tokens: list[int] = []
        self.fed = 0
        self.stop_reason = ""
        self._logits: torch.Tensor | None = None
        self._pos = 0
        self._stop_ids = {t for t in (tok.eot_id, tok.eos_id) if t is not None and t >= 0}
        self._stop_bytes = tuple(s.encode("utf-8") for s in params.stop if s)
        self._generator = None
        if params.temperature > 0:
            self._generator = torch.Generator(device=cache.keys[0].device)
            self._generator.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))

    def prefill(self, tokens: list[int], start_pos: int, stopped: Callable[[], bool] = lambda: False) -> int:
        """Run tokens (the prompt after what the cache already holds at start_pos) into the cache.

        Returns how many were written; fewer than len(tokens) when `stopped()` turned true
        between two chunks (those written stay valid in the cache)."""
        self._logits, written = prefill(self.model, tokens, start_pos, self.cache, self.slot, stopped)
        self._pos = start_pos + written
        return written

    def __iter__(self) -> Iterator[int]:
        if self._logits is None:
            return
        logits = self._logits
        while True:
            # A model may have more rows than its tokenizer has pieces (padding): never pick those.
            logits = logits[: self.tok.vocab_size]
            if self.constraint is not None and self.constraint.active:
                allowed = self.constraint.allowed()
                if allowed:  # never empty with byte fallback; else give up healing rather than hang
                    logits = mask_to(logits, allowed)
                else:
                    self.constraint.give_up()
            token = sample(logits, self.params.temperature, self.params.top_p, self._generator)
            draft = self._draft(token)
            if draft:
                # One pass over [token, *draft]: the logits after each; keep the draft while it
                # is what greedy decoding picks, then the model's own token follows.
                checked = [token, *draft]
                if self.decoder is not None:
                    rows = self.decoder.verify(checked, self._pos, self.cache, self.slot)
                else:
                    rows = verify(self.model, checked, self._pos, self.cache, self.slot)
                rows = rows[:, : self.tok.vocab_size]
                picks = rows.argmax(dim=-1).tolist()
                kept = next((i for i, d in enumerate(draft) if picks[i] != d), len(draft))
                self.drafted, self.accepted = self.drafted + len(draft), self.accepted + kept
                # A check costs more the longer the draft (on a small model; on a big one, whose
                # weights dominate, it is nearly free): draft what the recent drafts earned.
                self.draft_size = min(DRAFT_MAX, self.draft_size + DRAFT_GROWTH) if kept == len(draft) else max(1, kept)
                for t in [token, *draft[:kept]]:
                    if not (yield from self._emit(t, fed=True)):
                        return
                logits = rows[kept]
                continue
            if not (yield from self._emit(token, fed=False)):
                return
            if self.decoder is not None:
                logits = self.decoder(token, self._pos, self.cache, self.slot)
            else:
                logits = decode_one_token(self.model, token, self._pos, self.cache, self.slot)
            self.fed += 1
            self._pos += 1

    def _draft(self, token: int) -> list[int]:
        """Prompt-lookup draft to follow `token`, within the cache, the token limit and the vocabulary."""
        if self.lookup is None or (self.constraint is not None and self.constraint.active):
            return []
        if self._ends_generation(token):
            return []
        room = min(self.cache.max_seq_len - self._pos - 1, self.params.max_new_tokens - len(self.tokens) - 1)
        draft = self.lookup.draft_after(token, max(0, min(room, self.draft_size)))
        # Never draft a token that ends generation: nothing after it is wanted, and the model's
        # own pick after the draft may still be that token (then emitted without a pass).
        return draft[: next((i for i, t in enumerate(draft) if self._ends_generation(t)), len(draft))]

    def _ends_generation(self, token: int) -> bool:
        """An end token, or one that holds a whole stop string (a completion shown up to the
        line's end stops at the first newline: a single-line one's last draft used to be checked
        after it, a pass whose every token was thrown away)."""
        return token in self._stop_ids or any(stop in self.tok.token_bytes[token] for stop in self._stop_bytes)

    def _emit(self, token: int, fed: bool) -> Generator[int, None, bool]:
        """Yield one generated token; False when generation ends (<EOT>/EOS, or a full cache).
        fed: its keys/values are already in the cache (it was part of a verified draft)."""
        if token in self._stop_ids:
            self.stop_reason = "eot" if token == self.tok.eot_id else "eos"
            return False
        self.tokens.append(token)
        if self.lookup is not None:
            self.lookup.add(token)
        if self.constraint is not None:
            self.constraint.advance(token)
        if fed:
            self.fed += 1
            self._pos += 1
        yield token
        if self._pos >= self.cache.max_seq_len:
            self.stop_reason = "cache_full"
            return False
        return True
