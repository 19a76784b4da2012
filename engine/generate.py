"""Generation as small functions: prefill, decode one token, sample.

`generate_tokens` drives them for one prompt against one KV-cache slot and stops at
<EOT> (Code Llama's end of infilling), at EOS, at a stop string, at a token limit, at a
wall-clock budget, or when cancelled between two decode steps. The session in
`engine.session` decides which part of the prompt needs prefilling at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.model import KVCache, Transformer
from engine.tokenizer import Tokenizer

# Long prompts are prefilled in chunks: it bounds the attention-mask memory and lets a
# cancelled request stop between chunks rather than after the whole prompt.
PREFILL_CHUNK = 512


@dataclass
class SamplingParams:
    """How to generate one completion."""

    max_new_tokens: int = 128
    """Stop after this many generated tokens."""
    temperature: float = 0.0
    """0 is greedy (deterministic); the reference default for sampling is 0.6."""
    top_p: float = 0.9
    """Nucleus sampling threshold, used when temperature > 0."""
    stop: tuple[str, ...] = ()
    """Stop when the completion contains one of these strings (it is cut before it)."""
    time_budget_s: float | None = None
    """Stop decoding once this many seconds have passed since the request started."""
    seed: int | None = None
    """Seed for sampling; None draws a fresh one."""


@dataclass
class GenerationStats:
    """What one request cost, reported to the caller (and the server's status)."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""
    slot: int = 0

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    """Generated token ids (without <EOT>)."""
    fed: list[int] = field(default_factory=list)
    """Generated tokens whose keys/values were written into the cache."""
    stats: GenerationStats = field(default_factory=GenerationStats)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Pick the next token from logits (vocab,): greedy at temperature 0, else top-p."""
    if temperature <= 0:
        return int(torch.argmax(logits))
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


class HealingConstraint:
    """Forces the first generated tokens to spell `text` (token healing).

    A token is allowed while its bytes either continue the remaining text or complete it
    and run past it; byte-fallback tokens make every text reachable.
    """

    def __init__(self, tok: Tokenizer, text: str) -> None:
        self.tok = tok
        self.remaining = text.encode("utf-8")
        self.banned = {t for t in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) if t is not None}

    @property
    def active(self) -> bool:
        return bool(self.remaining)

    def allowed(self) -> list[int]:
        table = self.tok.token_bytes
        return [
            t
            for t in self.tok.tokens_by_first_byte.get(self.remaining[0], [])
            if t not in self.banned and (table[t].startswith(self.remaining) or self.remaining.startswith(table[t]))
        ]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed()
        if not allowed:  # cannot happen with byte fallback; give up healing rather than hang
            self.remaining = b""
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        masked[index] = logits[index]
        return masked

    def advance(self, token: int) -> None:
        data = self.tok.token_bytes[token]
        self.remaining = self.remaining[len(data) :] if self.remaining.startswith(data) else b""


def generate_tokens(
    model: Transformer,
    tok: Tokenizer,
    prompt: list[int],
    start_pos: int,
    cache: KVCache,
    slot: int,
    params: SamplingParams,
    healing: str = "",
    cancelled: Callable[[], bool] = lambda: False,
    on_tokens: Callable[[list[int]], bool] | None = None,
    started: float | None = None,
) -> Generation:
    """Prefill prompt[start_pos:] (the cache already holds prompt[:start_pos]) and decode.

    `on_tokens(generated)` is called after each token; returning True stops generation
    (the caller found a stop string). `started` is when the request began (perf_counter),
    for the time budget.
    """
    started = time.perf_counter() if started is None else started
    gen = Generation()
    stats = gen.stats
    stats.prompt_tokens, stats.reused_tokens, stats.slot = len(prompt), start_pos, slot
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device=cache.keys[0].device)
        generator.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))

    t0 = time.perf_counter()
    logits, stats.prefilled_tokens = prefill(model, prompt[start_pos:], start_pos, cache, slot, cancelled)
    stats.prefill_s = time.perf_counter() - t0
    if logits is None:
        stats.stop_reason = "cancelled"
        return gen

    t0 = time.perf_counter()
    constraint = HealingConstraint(tok, healing) if healing else None
    pos = len(prompt)
    stop_ids = {t for t in (tok.eot_id, tok.eos_id) if t is not None and t >= 0}
    while True:
        # A model may have more rows than its tokenizer has pieces (padding): never pick those.
        logits = logits[: tok.vocab_size]
        if constraint is not None and constraint.active:
            logits = constraint.mask(logits)
        token = sample(logits, params.temperature, params.top_p, generator)
        if token in stop_ids:
            stats.stop_reason = "eot" if token == tok.eot_id else "eos"
            break
        gen.tokens.append(token)
        if constraint is not None:
            constraint.advance(token)
        if on_tokens is not None and on_tokens(gen.tokens):
            stats.stop_reason = "stop_string"
            break
        if len(gen.tokens) >= params.max_new_tokens:
            stats.stop_reason = "max_tokens"
            break
        if params.time_budget_s is not None and time.perf_counter() - started >= params.time_budget_s:
            stats.stop_reason = "time_budget"
            break
        if cancelled():
            stats.stop_reason = "cancelled"
            break
        if pos >= cache.max_seq_len:
            stats.stop_reason = "cache_full"
            break
        logits = decode_one_token(model, token, pos, cache, slot)
        gen.fed.append(token)
        pos += 1
    stats.generated_tokens = len(gen.tokens)
    stats.decode_s = time.perf_counter() - t0
    return gen
