"""fp32 linear layers on CPU: weights in column tiles for decode, prefill by the faster GEMM.

Decode: a token multiplies each weight row by the whole input. Row-major, a 7B layer's input
(4,096 or 11,008 floats: 16-44 KB) does not stay in the 32 KB L1 cache while the weights stream
through it, and reading it back from L2 for every row held the weight stream back: on a 2-core
EPYC (Zen 4) the fp32 decode step streamed 26-29 GB/s, where the same step with the input's reads
left out streamed 46 (and with them confined to 4 KB, 41). So the weight is stored in tiles of at
most TILE_FLOATS columns, each tile's rows contiguous ([in / tile][out][tile]): the decode step
(engine/cpu_decode.c) reads a tile's rows in one sequential stream against a 4 KB slice of the
input that stays in L1. A 1.5 GB GEMV there: row-major 31 GB/s, tiled 38, a plain read 38.

Prefill: for float32, torch's CPU matmul calls MKL's sgemm (oneDNN only for bf16/fp16, or for fp32
where lower precision is allowed). On the same EPYC oneDNN ran a 7B-sized layer's 512-row prefill
1.4x faster (216-232 against 299-321 ms, 11008x4096), in exact fp32. Which one is faster depends
on the CPU, so engine.prefill_choice measures both per shape and remembers. A tiled weight is one
GEMM per tile, each tile an ordinary (out, tile) matrix, the products summed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from engine import c_library, prefill_choice
from engine.huge_pages import huge_page_zeros, room_for
from engine.prefill_choice import PREFILL_ROWS

TILE_FLOATS = 1024
"""The widest column tile: 4 KB of input, which stays in L1 beside the weight stream."""


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


class Fp32Prefill:
    """What both fp32 layers share: inference takes oneDNN's GEMM where it measured faster."""

    input_dtype = torch.float32

    @property
    def gemm_ok(self) -> bool:
        # Inference only: oneDNN's op has no backward (a LoRA fine-tune runs through F.linear).
        return onednn_linear_works() and not torch.is_grad_enabled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prefill_choice.matmul(self, x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], -1)


class Fp32CpuLinear(Fp32Prefill, nn.Linear):
    """nn.Linear (no bias) whose prefill-sized fp32 inputs take the GEMM measured faster here."""

    kind = "fp32"

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat, self.weight)

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        return onednn_linear(flat, self.weight)


def column_tile(in_features: int, widest: int = TILE_FLOATS) -> int:
    """The widest tile of at most `widest` columns, a whole number of 16-float vectors, that
    divides in_features (4,096: 1,024; 11,008: 688); in_features itself where it is no wider or
    no such tile divides it (then the layout is row-major)."""
    if in_features <= widest:
        return in_features
    return next((tile for tile in range(widest // 16 * 16, 15, -16) if in_features % tile == 0), in_features)


class TiledFp32Linear(Fp32Prefill, nn.Module):
    """An fp32 linear layer (no bias) on CPU, its weight in column tiles: `tiles` (in / tile,
    out, tile), tiles[j] = weight[:, j * tile : (j + 1) * tile]. In 2 MB pages where the kernel
    gives them (engine.huge_pages), as a decode step streams it every token."""

    kind = "fp32 tiled"

    def __init__(self, weight: torch.Tensor, widest: int = TILE_FLOATS) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.tile = column_tile(self.in_features, widest)
        count = self.in_features // self.tile
        tiles = huge_page_zeros((count, self.out_features, self.tile), "cpu", torch.float32)
        tiles.copy_(weight.detach().reshape(self.out_features, count, self.tile).transpose(0, 1))
        self.tiles = nn.Parameter(tiles, requires_grad=False)  # (a parameter, as the weight it replaces)

    @property
    def weight(self) -> torch.Tensor:
        """The weight (out, in), row-major: a copy."""
        return self.tiles.transpose(0, 1).reshape(self.out_features, self.in_features)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # A state dict holds the weight as nn.Linear's does (`weight`, row-major), so a model
        # loaded for inference still hands other code (transformers, a checkpoint) its weights.
        destination[prefix + "weight"] = self.weight

    def columns(self, flat: torch.Tensor, j: int) -> torch.Tensor:
        """The inputs' columns that tile j multiplies."""
        return flat[:, j * self.tile : (j + 1) * self.tile]

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        out = F.linear(self.columns(flat, 0), self.tiles[0])
        for j in range(1, len(self.tiles)):  # (each tile's product added by the GEMM itself)
            out.addmm_(self.columns(flat, j), self.tiles[j].t())
        return out

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        out = onednn_linear(self.columns(flat, 0).contiguous(), self.tiles[0])
        for j in range(1, len(self.tiles)):
            out += onednn_linear(self.columns(flat, j).contiguous(), self.tiles[j])
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tile={self.tile}"


def fp32_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, name, layer) of every plain fp32 CPU linear layer without bias."""
    found = []
    for parent in model.modules():
        for name, layer in parent.named_children():
            plain = type(layer) in (nn.Linear, Fp32CpuLinear) and layer.bias is None
            if plain and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu":
                found.append((parent, name, layer))
    return found


def use_fp32_cpu_layers(model: nn.Module, widest: int = TILE_FLOATS) -> int:
    """For inference on CPU with the C decode step: the model's fp32 linear layers become
    TiledFp32Linear (those tied to another module's weight, an output layer sharing the embedding,
    stay), one at a time: each old weight is let go before the next copy, so where the weights
    are the process's own the peak is one layer more. Where the copies would not leave room
    (engine.huge_pages.room_for: counted as if all stayed, since weights mapped from the
    checkpoint file stay mapped while copied), or the C step cannot be built (the tiles would
    only cost torch's paths a GEMM per tile), they stay row-major as Fp32CpuLinear, whose
    prefill may still take oneDNN. Returns how many were tiled."""
    layers = fp32_layers(model)
    # (no C library: no C step to read the tiles)
    if not (c_library.library_or_none() is not None and room_for(sum(layer.weight.nbytes for _, _, layer in layers))):
        use_onednn_prefill(model)
        return 0
    shared = {id(t) for m in model.modules() for t in m.parameters(recurse=False) if not isinstance(m, nn.Linear)}
    tiled = 0
    while layers:
        parent, name, layer = layers.pop()
        if id(layer.weight) not in shared:
            setattr(parent, name, TiledFp32Linear(layer.weight, widest))
            tiled += 1
        del layer  # (the last reference to the old weight: freed before the next copy)
    return tiled


def use_onednn_prefill(model: nn.Module) -> int:
    """Make model's fp32 CPU projections Fp32CpuLinear (not the output layer: a prefill computes
    its last row only); returns how many. Nothing changes where oneDNN's op is missing."""
    if not onednn_linear_works():
        return 0
    swapped = 0
    for parent, name, layer in fp32_layers(model):
        if type(layer) is nn.Linear and not (parent is model and name == "lm_head"):
            layer.__class__ = Fp32CpuLinear  # the same parameters, the forward above
            swapped += 1
    return swapped
