"""Loading a model for the server: which one, with which KV cache, and what it cost.

The engine (and torch) is imported here lazily, inside `load`: the server answers
`initialize` at once and pays for torch in the background.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsp.settings import Settings

if TYPE_CHECKING:
    from engine.backend import Backend
    from engine.loader import LoadedModel
    from engine.remote import RemoteEngine

from engine.pipeline import PROMPT_MARGIN, prompt_budget_problem, usable_lengths
from engine.wire import BackendConfig

__all__ = ["prompt_budget_problem", "usable_lengths"]

CACHE_SLOTS = 2
"""Sequences kept in the KV cache: two files stay warm while the user switches between them."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load. Two specs with the same weights_key share the loaded weights."""

    model: str | None
    """Checkpoint folder; None is the shipped default."""
    device: str = "auto"
    quantize: str = "none"
    dtype: str = "auto"
    max_seq_len: int = 2048
    """KV-cache length: the longest prompt plus the generated tokens."""
    threads: int | None = None
    """CPU threads for torch; None is default_threads()."""
    backend: BackendConfig | None = None
    """A shared inference server: `model` then only supplies the tokenizer."""
    compile: str = "auto"
    """The compiled decode step: auto, on or off (engine.session.InfillEngine.prepare_decode)."""

    @property
    def weights_key(self) -> tuple:
        return (self.model, self.device, self.quantize, self.dtype, self.backend)

    @classmethod
    def from_settings(
        cls, settings: Settings, dtype: str = "auto", threads: int | None = None, compile: str = "auto"
    ) -> ModelSpec:
        p = settings.prompt
        needed = p.prefix_tokens + p.suffix_tokens + p.context_tokens + settings.max_tokens + PROMPT_MARGIN
        # Round up so small budget changes do not reallocate the cache.
        b = settings.backend
        backend = BackendConfig(b.url, b.kind, b.api_key_env, b.model) if b.url else None
        cache = -(-needed // 512) * 512
        return cls(settings.model, settings.device, settings.quantize, dtype, cache, threads, backend, compile)


@dataclass
class ServedModel:
    """A loaded engine and the spec it was loaded for."""

    loaded: LoadedModel | RemoteModel
    spec: ModelSpec
    load_s: float
    """Loading and warming up, seconds."""

    @property
    def engine(self) -> Backend:
        return self.loaded.engine

    @property
    def path(self) -> str:
        return self.loaded.path

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def quantization(self) -> str:
        return self.loaded.quantization

    def describe(self) -> str:
        return self.loaded.describe()

    @property
    def decode_step(self) -> str | None:
        """How decoding runs here (engine.compiled.DecodeReport); None with a backend."""
        report = self.decode_report
        return report.describe() if report is not None else None

    @property
    def compiling(self) -> bool:
        return self.decode_report is not None and self.decode_report.state == "compiling"

    @property
    def decode_report(self):
        return getattr(self.engine, "decode_report", None)  # a RemoteEngine has none


def cache_length(spec: ModelSpec, args) -> int:
    """KV-cache positions: what the settings ask for, but never past what the model was trained
    on (positions past it are out of its distribution, and memory grows with them)."""
    return max(64, min(spec.max_seq_len, args.max_seq_len))


def default_threads() -> int:
    """torch's default (one per physical core) less one CPU, at least 1.

    The editor and this server's I/O threads need a core too: when one of torch's threads
    is descheduled, every parallel op waits for it. Measured in lsp.bench on this 2-core
    machine, busy with other work: 15M-parameter model, 2 threads p50/p95 5988/7511 ms,
    1 thread 234/324 ms.
    """
    import torch

    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


@dataclass
class RemoteModel:
    """A shared inference server in the place of a loaded model (what ServedModel reads)."""

    engine: RemoteEngine
    load_s: float

    @property
    def path(self) -> str:
        return f"{self.engine.served.name} at {self.engine.config.url}"

    @property
    def device(self) -> str:
        return f"remote ({self.engine.config.kind})"

    quantization = "(the server's)"

    def describe(self) -> str:
        return self.engine.describe() + f"; tokenizer {self.engine.tokenizer.path}, connected in {self.load_s:.2f} s"


def tokenizer_file(model: str | None):
    """The local tokenizer for a remote model: a checkpoint folder's tokenizer.model (no weights
    needed), a tokenizer.model named directly, or the shipped model's."""
    from engine.formats.common import TOKENIZER_FILE
    from engine.loader import model_path

    path = model_path(model)
    return path if path.is_file() else path / TOKENIZER_FILE


def connect(spec: ModelSpec) -> ServedModel:
    """The backend's model, checked against our tokenizer, with one test completion."""
    from engine.remote import RemoteEngine
    from engine.tokenizer import Tokenizer

    assert spec.backend is not None
    started = time.perf_counter()
    engine = RemoteEngine(spec.backend, Tokenizer(tokenizer_file(spec.model)))
    try:
        warm_up(engine)
    except BaseException:
        engine.close()
        raise
    elapsed = time.perf_counter() - started
    return ServedModel(RemoteModel(engine, elapsed), spec, elapsed)


def load(spec: ModelSpec) -> ServedModel:
    """Load weights and tokenizer and allocate the KV cache (engine.loader), or connect to the
    backend; raises the engine's errors."""
    if spec.backend is not None:
        return connect(spec)
    started = time.perf_counter()
    from engine.loader import load_engine

    loaded = load_engine(
        spec.model,
        spec.device,
        spec.dtype,
        spec.quantize,
        max_seq_len=spec.max_seq_len,
        cache_slots=CACHE_SLOTS,
        threads=spec.threads or default_threads(),
    )
    warm_up(loaded.engine)
    # On CPU the eager step answers while this compiles in a thread; CUDA graphs are captured now.
    loaded.engine.prepare_decode(spec.compile, background=True)
    return ServedModel(loaded, spec, time.perf_counter() - started)


def warm_up(engine: Backend) -> None:
    """One tiny completion, so the first real request does not pay for first-call allocations
    (and a backend that cannot complete is found at load, not at the first keystroke)."""
    from engine.sampling import SamplingParams

    engine.complete("def f(x):\n    ", "\n", params=SamplingParams(max_new_tokens=2, time_budget_s=30.0))
    engine.reset_cache()


def resize(loaded: ServedModel, spec: ModelSpec) -> ServedModel:
    """Same weights, a KV cache of another length (after the prompt budgets changed)."""
    from engine.session import InfillEngine

    if spec.backend is not None:  # the server owns its cache
        loaded.spec = spec
        return loaded

    model, tokenizer = loaded.engine.model, loaded.engine.tokenizer
    loaded.loaded.engine = None  # type: ignore[assignment]  # free the old cache before allocating the new one
    cache = cache_length(spec, model.args)
    engine = InfillEngine(model, tokenizer, max_seq_len=cache, cache_slots=CACHE_SLOTS)
    engine.prepare_decode(spec.compile, background=True)  # a cache of another length: compiled anew
    loaded.loaded.engine = engine
    loaded.spec = spec
    return loaded
