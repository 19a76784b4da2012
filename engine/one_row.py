"""Linear layers for one row, written for the compiled CPU decode step.

A decoded token multiplies one row by every weight matrix. As a GEMM library call per layer
(oneDNN or MKL, an `extern` call in inductor's graph) each costs its dispatch and a copy of the
row, and torch's bf16 path is slow at one row: a 384x384 bf16 `F.linear` took 30 us here where
the fp32 one took 9 us. Written as multiply-and-sum, `(x * W).sum(-1)`, inductor turns the layer
into a loop over the weight that it fuses with what surrounds it (the RMSNorm before it, SiLU
after): on the shipped model the compiled decode step went from 4.5 to 1.8 ms a token in bf16
and from 3.3 to 2.4 ms in fp32 (2-core Xeon, 2 threads, side by side in one process, 2026-12-02).

The products are summed in fp32, as the GEMM libraries accumulate, but in another order, so the
logits differ from eager's by rounding: the compiled step is used only where its greedy tokens
equal eager's (engine.compiled). Quantized layers keep torch's int8/int4 kernels: the int8
layer written out this way was 1.1x faster, but inductor drops the kernel's rounding to bf16
(unless told to emulate every cast, which made the whole step 1.8x slower), and its greedy
tokens then drifted from eager's on a small random model. Any other layer (LoRA, a bias) is
called as it is.
"""

from __future__ import annotations

import torch
from torch import nn


def one_row_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for x (..., in) holding one row, in a form inductor fuses."""
    if type(layer) is nn.Linear and layer.bias is None:
        return (x.float().unsqueeze(-2) * layer.weight.float()).sum(-1).to(x.dtype)
    return layer(x)
