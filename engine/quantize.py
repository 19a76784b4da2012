"""Weight quantization: an offline state-dict transform plus a runtime Linear swap.

Modes:
  int8      weight-only, per-output-channel scales; CPU: torch._weight_int8pack_mm.
  int4      weight-only, group-wise asymmetric (groups of 128 along the input);
            CPU: torch's int4 CPU pack, CUDA: tinygemm (_weight_int4pack_mm).
  nf4       bitsandbytes 4-bit NormalFloat, CUDA only (the memory saver; QLoRA's base).
  bnb-int8  bitsandbytes LLM.int8(), CUDA only.

On this project's CPU bitsandbytes was measured 50-90x slower than torch's own kernels
(DESIGN.md, section 2), so the bitsandbytes modes refuse to run on CPU.

int8/int4 weights are stored in a portable form (`quantize_state_dict`) that a
checkpoint can save; the modules pack them for the device they run on when built.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from ctypes import c_int, c_int64, c_void_p

import torch
import torch.nn.functional as F
from torch import nn

from engine import c_library, prefill_choice
from engine.options import BNB_QUANTIZATIONS, QUANTIZATIONS, TORCH_QUANTIZATIONS

__all__ = ["BNB_QUANTIZATIONS", "QUANTIZATIONS", "TORCH_QUANTIZATIONS"]
log = logging.getLogger(__name__)
INT4_GROUPSIZE = 128
INT4_INNER_K_TILES = 8


class QuantizationError(ValueError):
    """The requested quantization cannot run here or on this model."""


def quantized_linear_names(model: nn.Module) -> list[str]:
    """Linear layers that quantization replaces: every projection and the output layer."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def int4_supported(out_features: int, in_features: int, groupsize: int = INT4_GROUPSIZE) -> bool:
    """Whether torch's int4 kernels take this shape (Code Llama's all do, vocab 32016 included)."""
    return out_features % 16 == 0 and in_features % groupsize == 0 and in_features % (INT4_INNER_K_TILES * 16) == 0


# ---- offline transform: full-precision weight -> portable quantized tensors ----


def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric per-row int8: weight ~= int8 * scales[:, None]."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
    q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return {"weight": q, "scales": scales}


def quantize_int4(weight: torch.Tensor, groupsize: int = INT4_GROUPSIZE) -> dict[str, torch.Tensor]:
    """Asymmetric group-wise int4, two values a byte: weight ~= q * scale + min.

    Returns weight (N, K/2) uint8 (even column in the high nibble) and scales_and_zeros
    (K/groupsize, N, 2) in tinygemm's convention: w = (q - 8) * scale + zero.
    """
    n, k = weight.shape
    w = weight.float().reshape(n, k // groupsize, groupsize)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-10)
    q = torch.round((w - low) / scales).clamp(0, 15).to(torch.uint8).reshape(n, k)
    zeros = low + 8 * scales
    scales_and_zeros = torch.stack([scales.squeeze(-1), zeros.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    return {"weight": (q[:, ::2] << 4) | q[:, 1::2], "scales_and_zeros": scales_and_zeros}


def quantize_state_dict(
    state_dict: dict[str, torch.Tensor], linear_names: list[str], mode: str
) -> dict[str, torch.Tensor]:
    """Replace each listed Linear's weight by its portable int8/int4 tensors."""
    if mode not in TORCH_QUANTIZATIONS:
        raise QuantizationError(f"only {TORCH_QUANTIZATIONS} can be saved; got {mode!r}")
    out = dict(state_dict)
    for name in linear_names:
        weight = out.pop(f"{name}.weight")
        if mode == "int4" and not int4_supported(*weight.shape):
            out[f"{name}.weight"] = weight  # stays in full precision (see int4_supported)
            continue
        parts = quantize_int8(weight) if mode == "int8" else quantize_int4(weight)
        out.update({f"{name}.{key}": value for key, value in parts.items()})
    return out


# ---- runtime modules ----


# torch's CPU int8/int4 kernels read their operands with aligned vector loads: on AVX-512
# CPUs `_weight_int8pack_mm` segfaults when the weight is not 16-byte aligned or the
# activations not 32-byte aligned (measured with views at byte offsets 1..48). Tensors
# mmapped from a safetensors file sit at whatever offset the file gives them, and views
# (slices, reshapes) keep their parent's offset, so every operand is checked and, if
# needed, copied into an allocation of its own (torch's CPU allocator aligns to 64).
KERNEL_ALIGNMENT = 64


def kernel_operand(t: torch.Tensor) -> torch.Tensor:
    """t itself if it is contiguous and 64-byte aligned, else a copy that is."""
    if torch.compiler.is_compiling():
        # Inside a compiled graph every intermediate is a fresh allocation of its own, and the
        # weights were checked when the module was built; data_ptr() does not exist there.
        return t
    if t.is_contiguous() and t.data_ptr() % KERNEL_ALIGNMENT == 0:
        return t
    copy = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    copy.copy_(t)
    if copy.data_ptr() % KERNEL_ALIGNMENT:  # an allocator that aligns less: over-allocate and slice
        spare = torch.empty(t.numel() * t.element_size() + KERNEL_ALIGNMENT, dtype=torch.uint8, device=t.device)
        start = -spare.data_ptr() % KERNEL_ALIGNMENT
        copy = spare[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape).copy_(t)
    return copy


# torch's CPU int8/int4 kernels are fast with bf16 activations only: with fp32 ones a
# 256-token prefill through one 4096x11008 layer took 13 s (int8) and 38 s (int4) here,
# against 0.7 s and 0.6 s in bf16. So on CPU they always compute in bf16.
CPU_KERNEL_DTYPE = torch.bfloat16


def kernel_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    return CPU_KERNEL_DTYPE if device.type == "cpu" else dtype


def int4_kernel_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    # tinygemm (CUDA int4) takes bf16 activations only.
    return CPU_KERNEL_DTYPE if device.type == "cpu" else torch.bfloat16


@functools.cache
def dequant_library() -> ctypes.CDLL | None:
    """engine.c_library's dequantization (engine/cpu_dequant.c), or None where it cannot be built:
    the prefill GEMMs then dequantize with torch ops, 2-3x slower."""
    library = c_library.library_or_none()
    if library is None:
        log.warning("prefill GEMMs dequantize with torch ops")
        return None
    library.dequant_int8_rows.argtypes = [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_void_p, c_int]
    library.dequant_int4_blocks.argtypes = [c_void_p, c_void_p, *[c_int64] * 5, c_void_p, c_int]
    library.dequant_int8_rows.restype = library.dequant_int4_blocks.restype = None
    return library


INT8_KERNEL_WIDTHS = 16
"""torch's int8 CPU kernel takes inputs of a multiple of this width (others: the dequantized GEMM)."""


class Int8Linear(nn.Module):
    kind = "int8"
    gemm_ok = True
    input_dtype = CPU_KERNEL_DTYPE

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", kernel_operand(weight))
        self.register_buffer("scales", kernel_operand(scales.to(kernel_dtype(weight.device, dtype))))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        if self.in_features % INT8_KERNEL_WIDTHS:  # torch 2.13's CPU kernel crashed on 136, 152, 168 inputs
            return self.gemm(flat)
        return torch._weight_int8pack_mm(flat, self.weight, self.scales)

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        library, parts = dequant_library(), []
        chunk = torch.empty(min(GEMM_CHUNK_ROWS, self.out_features), self.in_features, dtype=CPU_KERNEL_DTYPE)
        for start in range(0, self.out_features, GEMM_CHUNK_ROWS):
            end = min(start + GEMM_CHUNK_ROWS, self.out_features)
            if library is None:
                weight = self.weight[start:end].to(CPU_KERNEL_DTYPE) * self.scales[start:end, None]
            else:
                weight = chunk[: end - start]
                library.dequant_int8_rows(self.weight.data_ptr(), self.scales.data_ptr(), self.in_features,
                                          start, end, weight.data_ptr(), torch.get_num_threads())  # fmt: skip
            parts.append(F.linear(flat, weight))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            flat = kernel_operand(x.reshape(-1, self.in_features).to(CPU_KERNEL_DTYPE))
            return prefill_choice.matmul(self, flat).to(x.dtype).reshape(*x.shape[:-1], -1)
        # On CUDA the dequantize fuses into the matmul under torch.compile (gpt-fast).
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class Int4Linear(nn.Module):
    kind = "int4"
    input_dtype = CPU_KERNEL_DTYPE

    def __init__(self, weight: torch.Tensor, scales_and_zeros: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.in_features = weight.shape[1] * 2
        self.groupsize = self.in_features // scales_and_zeros.shape[0]
        if weight.device.type == "cpu":
            unpacked = torch.stack([weight >> 4, weight & 0xF], dim=-1).reshape(self.out_features, -1)
            packed = torch._convert_weight_to_int4pack_for_cpu(
                kernel_operand(unpacked.to(torch.int32)), INT4_INNER_K_TILES
            )
        else:
            packed = torch._convert_weight_to_int4pack(weight.contiguous(), INT4_INNER_K_TILES)
        self.register_buffer("packed", kernel_operand(packed))
        zeros_dtype = int4_kernel_dtype(weight.device, dtype)
        self.register_buffer("scales_and_zeros", kernel_operand(scales_and_zeros.to(zeros_dtype)))
        self.gemm_ok = weight.device.type == "cpu" and cpu_int4_layout_known()
        """The prefill GEMM dequantizes from the packed weight (no second copy of it is kept),
        which needs torch's CPU pack layout: checked once per process, else the kernel always runs."""

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.groupsize, self.scales_and_zeros)

    def gemm(self, flat: torch.Tensor) -> torch.Tensor:
        # Straight from the packed blocks (CPU_INT4_BLOCK), GEMM_CHUNK_ROWS output rows at a time.
        n, k, block = self.out_features, self.in_features, CPU_INT4_BLOCK
        full = n // block * block
        library, per_chunk = dequant_library(), GEMM_CHUNK_ROWS // block
        buffer = torch.empty(k * min(GEMM_CHUNK_ROWS, full), dtype=CPU_KERNEL_DTYPE) if library else None
        parts = []
        for first in range(0, full // block, per_chunk):
            last = min(first + per_chunk, full // block)
            if library is None:
                parts.append(self.torch_dequantized_product(flat, first, last))
                continue
            weight_t = buffer[: k * (last - first) * block].view(k, (last - first) * block)
            library.dequant_int4_blocks(self.packed.data_ptr(), self.scales_and_zeros.data_ptr(), n, k,
                                        self.groupsize, first, last, weight_t.data_ptr(),
                                        torch.get_num_threads())  # fmt: skip
            parts.append(torch.matmul(flat, weight_t))
        if n > full:  # the rows after the last full block
            q = unpack_cpu_int4(self.packed, n, k)[full:].to(CPU_KERNEL_DTYPE)
            scale, offset = self.group_scales(slice(full, n))
            groups = q.view(n - full, -1, self.groupsize)
            weight = torch.addcmul(offset.unsqueeze(-1), groups, scale.unsqueeze(-1)).reshape(n - full, k)
            parts.append(F.linear(flat, weight))
        return torch.cat(parts, dim=1)

    def torch_dequantized_product(self, flat: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """flat times the full blocks first..last dequantized with torch ops (where the C library
        cannot be built): (rows, 64 (last - first))."""
        k, block = self.in_features, CPU_INT4_BLOCK
        blocks = self.packed.reshape(-1)[: last * k * block // 2].view(last, k, block // 2)
        chunk, c = blocks[first:last], last - first  # (c, in, 32) bytes
        # Row r of the chunk is lane r % 64 of block r // 64: the low nibbles hold lanes 0-31.
        # Per block (in, 64) columns, each half dequantized on its own (measured fastest).
        scale, offset = (
            t.reshape(c, block, -1).transpose(1, 2).unsqueeze(2)  # (c, groups, 1, 64)
            for t in self.group_scales(slice(first * block, last * block))
        )
        halves = []
        for nibbles, lanes in ((chunk & 0xF, slice(0, block // 2)), (chunk >> 4, slice(block // 2, block))):
            q = nibbles.to(CPU_KERNEL_DTYPE).view(c, -1, self.groupsize, block // 2)
            halves.append(torch.addcmul(offset[..., lanes].contiguous(), q, scale[..., lanes].contiguous()))
        weight = torch.cat(halves, dim=-1).view(c, k, block)
        return torch.matmul(flat, weight).transpose(0, 1).reshape(flat.shape[0], -1)

    def group_scales(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) per row and group, so that w = q * scale + offset (offset = zero - 8 * scale)."""
        scale, zero = self.scales_and_zeros[:, rows].unbind(-1)  # (groups, rows) each
        return scale.t(), (zero - 8 * scale).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = kernel_operand(x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype))
        if x.device.type == "cpu":
            y = prefill_choice.matmul(self, flat)
        else:
            y = torch._weight_int4pack_mm(flat, self.packed, self.groupsize, self.scales_and_zeros)
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


GEMM_CHUNK_ROWS = 512
"""Output rows a prefill GEMM dequantizes at a time: 4 MB of bf16 at 4,096 inputs, which stays in
cache. A 7B layer dequantized whole ran 1.5-3x slower here (written out to memory and read back):
11008x4096 int8 at 512 rows 112 -> 85 ms, int4 224 -> 107 ms, the kernels 309-321 ms."""

CPU_INT4_BLOCK = 64
"""torch's CPU int4 pack stores rows in blocks of 64: [N/64][K][32] bytes, row n of a block in
the low nibble and n + 32 in the high one; the rows past the last full block as [K][rest/2],
two neighbouring rows a byte (torch 2.13; cpu_int4_layout_known() checks it)."""


def unpack_cpu_int4(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The (out, in) uint8 values 0..15 that torch._convert_weight_to_int4pack_for_cpu packed."""
    flat = packed.reshape(-1)
    full = out_features // CPU_INT4_BLOCK * CPU_INT4_BLOCK
    parts = []
    if full:
        blocks = flat[: full * in_features // 2].view(full // CPU_INT4_BLOCK, in_features, CPU_INT4_BLOCK // 2)
        rows = torch.cat([blocks & 0xF, blocks >> 4], dim=-1)  # (blocks, in, 64)
        parts.append(rows.transpose(1, 2).reshape(full, in_features))
    if out_features > full:
        rest = flat[full * in_features // 2 :].view(in_features, (out_features - full) // 2)
        parts.append(torch.stack([rest & 0xF, rest >> 4], dim=-1).reshape(in_features, -1).t())
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@functools.cache
def cpu_int4_layout_known() -> bool:
    """Whether unpack_cpu_int4 undoes this torch's CPU pack (a full block and a tail of rows)."""
    values = torch.randint(0, 16, (CPU_INT4_BLOCK + 16, 2 * INT4_GROUPSIZE), dtype=torch.int32)
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(values, INT4_INNER_K_TILES)
        return torch.equal(unpack_cpu_int4(packed, *values.shape).to(torch.int32), values)
    except (RuntimeError, ValueError):
        return False


def bnb_linear(weight: torch.Tensor, mode: str, dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes Linear holding weight, quantized as it moves to the GPU."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    if mode == "nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight.to(dtype), requires_grad=False, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    return layer.cuda()


def check_quantization(mode: str, device: torch.device) -> None:
    if mode not in QUANTIZATIONS:
        raise QuantizationError(f"unknown quantization {mode!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if mode in BNB_QUANTIZATIONS and device.type != "cuda":
        raise QuantizationError(
            f"--quantize {mode} uses bitsandbytes, which needs a CUDA GPU (on CPU it was measured "
            "50-90x slower than torch's kernels): use int8 or int4 on CPU"
        )


def build_quantized_linear(
    tensors: dict[str, torch.Tensor], mode: str, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """The runtime module for one layer, from its (portable or full-precision) tensors."""
    if mode in BNB_QUANTIZATIONS:
        return bnb_linear(tensors["weight"], mode, dtype)
    if "scales" in tensors:
        return Int8Linear(tensors["weight"].to(device), tensors["scales"].to(device), dtype)
    if "scales_and_zeros" in tensors:
        return Int4Linear(tensors["weight"].to(device), tensors["scales_and_zeros"].to(device), dtype)
    # A layer int4 could not quantize (see int4_supported): plain Linear.
    weight = tensors["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
    return layer
