"""Counters and latency percentiles for `codellama/status` (PROTOCOL.md lists the fields).

Updated on the event loop only, so it needs no lock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

LATENCY_WINDOW = 1000
"""Latency percentiles are over this many most recent model answers."""


def package_version() -> str:
    try:
        return metadata.version("codellama-lsp")
    except metadata.PackageNotFoundError:
        return "unknown"


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class ModelState:
    """What the process's model is doing (one per process: lsp.host.ModelHost keeps it)."""

    state: str = "loading"
    """"loading", "ready" or "error"."""
    model: str = ""
    device: str = ""
    quantize: str = "none"
    message: str | None = None
    """Why the state is what it is (the load error, or what was loaded)."""
    load_seconds: float | None = None
    backend: dict | None = None
    """{"url", "kind", "model"} of the shared inference server in use; None: the model runs here."""
    loaded: Any = field(default=None, repr=False)
    """lsp.loading.ServedModel while ready."""


@dataclass
class Status:
    """One session's counters (its model fields come from the process's ModelState)."""

    state: str = "loading"
    """The model's state, or "disabled" when this session's settings turned completions off."""
    requests: int = 0
    """Completion requests received (inline and classic)."""
    served: int = 0
    """Requests answered by a model generation that ran to its end."""
    cancelled: int = 0
    """Requests superseded by a newer one for the same document, or cancelled by the client."""
    typed_through: int = 0
    """Requests answered from the completion on screen, without the model."""
    prefetched: int = 0
    """Requests answered by the completion computed, while the previous one was shown, for accepting it."""
    generations: int = 0
    """Model calls (cancelled ones too)."""
    cache_hits: int = 0
    """Model calls that reused the KV cache for at least half of their prompt."""
    tokens_prefilled: int = 0
    """Prompt tokens run through the model (not reused from the KV cache), all model calls."""
    tokens_reused: int = 0
    """Prompt tokens served from the KV cache (with a backend: the server's prefix cache, as it reports)."""
    tokens_generated: int = 0
    """Tokens generated, all model calls (cancelled ones too: it is work done)."""
    accepted: int = 0
    """Completions the client reported accepted (codellama.accept)."""
    empty: int = 0
    """Answers without an item (loading, disabled, bad position, or nothing left after post-processing)."""
    failed: int = 0
    """Requests whose model call raised an error."""
    last_error: str | None = None
    """The last such error (e.g. the backend is unreachable); None once a request succeeds again."""
    load_seconds: float | None = None
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    """Request-to-answer times of the requests the model served."""

    def record_generation(self, stats: Any) -> None:
        """Account for one model call (engine.generate.GenerationStats), finished or cancelled."""
        self.generations += 1
        self.tokens_prefilled += stats.prefilled_tokens
        self.tokens_reused += stats.reused_tokens
        self.tokens_generated += stats.generated_tokens
        if stats.prompt_tokens and stats.reused_tokens * 2 >= stats.prompt_tokens:
            self.cache_hits += 1

    def to_json(
        self, generating: bool = False, model: ModelState | None = None, recent_places: int = 0
    ) -> dict[str, Any]:
        latencies = list(self.latencies_ms)
        model = model or ModelState()
        return {
            "state": self.state,
            "model": model.model,
            "device": model.device,
            "quantize": model.quantize,
            "message": model.message,
            "requests": self.requests,
            "served": self.served,
            "cancelled": self.cancelled,
            "typedThrough": self.typed_through,
            "prefetched": self.prefetched,
            "recentPlaces": recent_places,
            "cacheHits": self.cache_hits,
            "tokensPrefilled": self.tokens_prefilled,
            "tokensReused": self.tokens_reused,
            "tokensGenerated": self.tokens_generated,
            "generations": self.generations,
            "accepted": self.accepted,
            "empty": self.empty,
            "failed": self.failed,
            "lastError": self.last_error,
            "backend": model.backend,
            "loadSeconds": model.load_seconds,
            "decodeStep": model.loaded.decode_step if model.loaded is not None else None,
            "generating": generating,
            "latencyMs": {
                "last": latencies[-1] if latencies else None,
                "p50": percentile(latencies, 50),
                "p95": percentile(latencies, 95),
            },
            "version": package_version(),
        }
