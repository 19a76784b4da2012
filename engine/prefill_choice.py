"""Which kernel a linear layer's prefill runs on this CPU: measured once, remembered.

torch's int8 and int4 CPU kernels are made for one row at a time (decode). For the many rows
of a prefill a GEMM over the dequantized weight in bf16 can be much faster: on a Xeon with AMX
it ran 7B-sized int8 layers' prefill at 417-448 tokens/s against the kernel's 158-167. On a CPU
without bf16 matrix units the kernel may win. Likewise an fp32 layer's default GEMM (MKL's) may
lose to oneDNN's (engine.cpu_linear). So each layer shape is timed both ways for a few row
counts, the faster is kept, and the choices are saved (JSON, for this CPU, ISA, torch and
thread count) in this user's cache folder, so that later loads measure nothing.

Decode (one row) always takes the kernel: it reads the quantized weight once, where a GEMM
would first write a dequantized copy of it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from engine.machine import cpu_flags, isa_summary
from engine.user_cache import private_cache_dir

log = logging.getLogger(__name__)

PREFILL_ROWS = 32
"""From this many rows a layer may run as a GEMM instead of its kernel."""
ROW_BUCKETS = (32, 64, 128, 256, 512)
"""Row counts measured (a prefill chunk is at most 512 rows; others use the bucket below them)."""
CHOICES_FILE = "prefill-kernels.json"
GEMMS_VERSION = 2
"""Part of the key: choices measured against an older GEMM path (2: the dequantization in C,
oneDNN for fp32) are measured again."""

_choices: dict[str, bool] = {}
"""'kind out x in @ rows' -> whether the layer's GEMM measured faster than its kernel."""
_loaded_for: str | None = None


class PrefillChoiceLayer(Protocol):
    kind: str
    out_features: int
    in_features: int
    input_dtype: torch.dtype
    gemm_ok: bool
    """Whether the GEMM can run now (a layout this torch packs as expected; not while training)."""

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        """The default path (the one decode always takes)."""

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        """The alternative for many rows."""


def bucket(rows: int) -> int:
    return max(b for b in ROW_BUCKETS if b <= rows) if rows >= ROW_BUCKETS[0] else rows


def choice_key(layer: PrefillChoiceLayer, rows: int) -> str:
    return f"{layer.kind} {layer.out_features}x{layer.in_features} @ {bucket(rows)}"


def machine_key() -> str:
    """Choices hold for this CPU, ISA, torch build and thread count only."""
    return f"{cpu_and_torch()} | {torch.get_num_threads()} threads | GEMMs v{GEMMS_VERSION}"


@functools.cache
def cpu_and_torch() -> str:
    """(Read once: machine_key is asked on every prefill-sized layer call, /proc/cpuinfo is slow.)"""
    model, flags = cpu_flags()
    return f"{model} | {isa_summary(flags)} | torch {torch.__version__}"


def choices_path() -> Path:
    return private_cache_dir("measured") / CHOICES_FILE  # raises where that folder is refused


def load_choices() -> None:
    """Read this machine's saved choices (once per machine key); a bad file is ignored, not trusted."""
    global _loaded_for
    key = machine_key()
    if _loaded_for == key:
        return
    _loaded_for = key
    try:
        saved = json.loads(choices_path().read_text(encoding="utf-8")).get(key, {})
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError) as e:  # PermissionError: a refused cache folder
        log.warning("ignoring saved prefill kernel choices: %s", e)
        return
    if isinstance(saved, dict):
        _choices.update({k: v for k, v in saved.items() if isinstance(k, str) and isinstance(v, bool)})


def save_choices() -> None:
    """Write this machine's choices next to other machines' (atomically; a failure only costs re-measuring)."""
    try:
        path = choices_path()
        try:
            everything = json.loads(path.read_text(encoding="utf-8"))
            everything = everything if isinstance(everything, dict) else {}
        except (OSError, ValueError):
            everything = {}
        everything[machine_key()] = dict(sorted(_choices.items()))
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".prefill-kernels-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump(everything, f, indent=1)
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not save prefill kernel choices: %s", e)


def measure(layer: PrefillChoiceLayer, flat: torch.Tensor) -> bool:
    """Time both paths on flat (after a warm-up run each); True if the GEMM was faster."""
    timings = []
    for run in (layer.kernel, layer.gemm):
        run(flat)
        started = time.perf_counter()
        run(flat)
        timings.append(time.perf_counter() - started)
    return timings[1] < timings[0]


def prefers_gemm(layer: PrefillChoiceLayer, flat: torch.Tensor) -> bool:
    """Whether this prefill-sized input should run as the layer's GEMM; a shape
    never measured is measured now (tune() does them all at load)."""
    load_choices()
    key = choice_key(layer, flat.shape[0])
    if key not in _choices:
        _choices[key] = measure(layer, flat)
    return _choices[key]


def matmul(layer: PrefillChoiceLayer, flat: torch.Tensor) -> torch.Tensor:
    """flat (rows, in) through layer: its kernel, or for a prefill its GEMM where that measured
    faster here (never inside a compiled graph, which has its own kernels)."""
    if flat.shape[0] >= PREFILL_ROWS and layer.gemm_ok and not torch.compiler.is_compiling():
        if prefers_gemm(layer, flat):
            return layer.gemm(flat)
    return layer.kernel(flat)


@torch.inference_mode()
def tune(model: torch.nn.Module, progress: Callable[[str], None] = lambda message: None) -> int:
    """Measure every layer shape of model with a choice at every row bucket not measured on this
    machine yet, and save the choices; returns how many were measured (0 once saved)."""
    load_choices()
    layers: dict[str, PrefillChoiceLayer] = {}
    for name, module in model.named_modules():
        # (not the output layer: a prefill computes its last row only)
        if hasattr(module, "gemm") and getattr(module, "gemm_ok", False) and name != "lm_head":
            layers.setdefault(f"{module.kind} {module.out_features}x{module.in_features}", module)
    todo = [
        (layer, rows) for layer in layers.values() for rows in ROW_BUCKETS if choice_key(layer, rows) not in _choices
    ]
    for i, (layer, rows) in enumerate(todo):
        progress(f"measuring prefill kernels {i + 1}/{len(todo)}")
        flat = torch.randn(rows, layer.in_features, dtype=layer.input_dtype)
        _choices[choice_key(layer, rows)] = measure(layer, flat)
    if todo:
        save_choices()
    return len(todo)


def forget() -> None:
    """Drop the choices in memory (tests; a new machine key reloads from the file)."""
    global _loaded_for
    _choices.clear()
    _loaded_for = None
