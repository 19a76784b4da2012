"""The one way to get a ready engine: checkpoint folder (or the shipped model) + device,
dtype, quantization -> an InfillEngine with its KV cache, and what it cost.

Used by the server (lsp/loading.py), `codellama-lsp complete` / `check` / `convert`,
`codellama-train eval` and the benchmarks, so they all load a model the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.checkpoints import CheckpointInfo, load_model
from engine.cpu_linear import use_fp32_cpu_layers
from engine.defaults import default_model_path
from engine.huge_pages import use_huge_pages
from engine.prefill_choice import tune as tune_prefill
from engine.session import InfillEngine

log = logging.getLogger(__name__)

DEFAULT_CACHE_TOKENS = 4096
"""KV-cache positions when the caller does not say (never more than the model was trained on)."""


@dataclass
class LoadedModel:
    engine: InfillEngine
    info: CheckpointInfo
    path: str
    device: str
    dtype: str
    quantization: str
    parameters: int
    load_s: float

    def describe(self) -> str:
        return (
            f"{self.path} ({self.parameters / 1e6:.1f}M parameters, {self.info.format} format) on {self.device} "
            f"as {self.dtype}, quantization {self.quantization}, loaded in {self.load_s:.2f} s"
        )


def model_path(model: str | Path | None) -> Path:
    """The folder to load: the one named, or the shipped default."""
    return Path(model).expanduser() if model else default_model_path()


def load_engine(
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    *,
    max_seq_len: int = DEFAULT_CACHE_TOKENS,
    cache_slots: int = 2,
    threads: int | None = None,
    past_trained_length: bool = False,
) -> LoadedModel:
    """Load weights and tokenizer and allocate the KV cache; raises the engine's errors
    (CheckpointError, QuantizationError, TokenizerError) with the file and the problem.

    The cache never holds more positions than the model was trained on, unless
    past_trained_length (speed benchmarks, which measure long prompts on small models)."""
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    path = model_path(model)
    module, tokenizer, info = load_model(path, device, dtype, quantize)
    if str(module.model.embed_tokens.weight.device) == "cpu":
        # Decode streams every weight once a token: fp32 weights in column tiles decoded a
        # 7B-sized model 1.3x faster on a 2-core EPYC (engine/cpu_linear.py), and in 2 MB pages
        # bf16 and int4 layers 1.15x (engine/huge_pages.py). (The tiles are made in huge pages
        # first, so they are copied once; all before the prefill kernels are timed, and before
        # any decode step keeps the weights' addresses.)
        moved_started = time.perf_counter()
        use_fp32_cpu_layers(module)
        if moved := use_huge_pages(module):
            log.info("%.0f MB of weights in memory that asked for huge pages, in %.1f s", moved / 2**20,
                     time.perf_counter() - moved_started)  # fmt: skip
        # Once per machine (then read from the user's cache): which kernel each quantized or
        # fp32 layer's prefill runs, so no request pays for measuring it.
        tuned_started = time.perf_counter()
        if measured := tune_prefill(module):
            log.info("measured %d prefill kernel choices in %.1f s", measured, time.perf_counter() - tuned_started)
    # Positions past the trained length are out of the model's distribution.
    cache = max_seq_len if past_trained_length else max(64, min(max_seq_len, info.args.max_seq_len))
    engine = InfillEngine(module, tokenizer, max_seq_len=cache, cache_slots=cache_slots)
    return LoadedModel(
        engine=engine,
        info=info,
        path=str(path),
        device=str(engine.device),
        dtype=str(engine.dtype).removeprefix("torch."),
        quantization=info.quantization if info.quantization != "none" else quantize,
        parameters=module.num_parameters(),
        load_s=time.perf_counter() - started,
    )
