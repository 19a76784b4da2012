"""fp32 linear layers on CPU whose prefill may run oneDNN's GEMM instead of torch's default.

For float32, torch's CPU matmul calls MKL's sgemm (oneDNN only for bf16/fp16, or for fp32 where
lower precision is allowed). On a 2-core AMD EPYC (Zen 4) oneDNN ran a 7B-sized layer's 512-row
prefill 1.4x faster (216-232 against 299-321 ms, 11008x4096), in exact fp32 and from the plain
weight (no second, reordered copy). Which one is faster depends on the CPU, so engine.prefill_choice
measures both per shape and remembers; decode (one row) keeps F.linear.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from engine import prefill_choice
from engine.prefill_choice import PREFILL_ROWS


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this torch has oneDNN's linear op and it computes F.linear (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x, w = torch.randn(PREFILL_ROWS, 64), torch.randn(48, 64)
    try:
        return torch.allclose(onednn_linear(x, w), F.linear(x, w), rtol=1e-4, atol=1e-4)
    except (RuntimeError, AttributeError):
        return False


def onednn_linear(flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # (the op inductor's CPU freezing pass emits; "none": no fused activation)
    return torch.ops.mkldnn._linear_pointwise(flat, weight, None, "none", [None], "")


class Fp32CpuLinear(nn.Linear):
    """nn.Linear (no bias) whose prefill-sized fp32 inputs take the GEMM measured faster here."""

    kind = "fp32"
    input_dtype = torch.float32

    @property
    def gemm_ok(self) -> bool:
        # Inference only: oneDNN's op has no backward (a LoRA fine-tune runs through F.linear).
        return not torch.is_grad_enabled()

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat, self.weight)

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        return onednn_linear(flat, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prefill_choice.matmul(self, x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], -1)


def use_onednn_prefill(model: nn.Module) -> int:
    """Make model's fp32 CPU projections Fp32CpuLinear (not the output layer: a prefill computes
    its last row only); returns how many. Nothing changes where oneDNN's op is missing."""
    if not onednn_linear_works():
        return 0
    swapped = 0
    for name, module in list(model.named_modules()):
        plain = type(module) is nn.Linear and module.bias is None and name != "lm_head"
        if plain and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu":
            module.__class__ = Fp32CpuLinear  # the same parameters, the forward above
            swapped += 1
    return swapped
