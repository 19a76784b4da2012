"""What one generation is asked to do, and what it reports (torch-free: the server's
pipeline builds these before torch is loaded)."""

from __future__ import annotations

from dataclasses import dataclass


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
    prompt_lookup: bool = True
    """Greedy only: speculative decoding with drafts looked up in the prompt (engine.lookup)."""


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
    """eot, eos, max_tokens, time_budget, stop_string, post_process (the caller had enough),
    cancelled, cache_full."""
    slot: int = 0
    drafted_tokens: int = 0
    """Prompt lookup: draft tokens checked, and of those, kept (the rest cost only the check)."""
    accepted_tokens: int = 0

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0
