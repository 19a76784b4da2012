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

import time

import torch
import torch.nn.functional as F
from torch import nn

from engine.options import BNB_QUANTIZATIONS, QUANTIZATIONS, TORCH_QUANTIZATIONS

__all__ = ["BNB_QUANTIZATIONS", "QUANTIZATIONS", "TORCH_QUANTIZATIONS"]
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


PREFILL_ROWS = 32
"""From this many rows (prefill chunks) a CPU int8 layer may run as a bf16 GEMM instead."""
_prefill_choice: dict[tuple[int, int, int], bool] = {}
"""(out, in, rows bucket) -> whether dequantize + bf16 GEMM measured faster than torch's int8 kernel."""


def faster_as_bf16_gemm(layer: Int8Linear, flat: torch.Tensor) -> bool:
    """Measured once per shape on this machine: on one with native bf16 matrix units (AMX) a
    dequantized bf16 GEMM ran a 7B layer's prefill several times faster than the int8 kernel;
    on one without, the kernel may win. Decode (one row) always uses the kernel."""
    key = (layer.out_features, layer.in_features, 1 << (flat.shape[0].bit_length() - 1))
    if key not in _prefill_choice:
        timings = []
        for run in (layer.int8_kernel, layer.bf16_gemm):
            run(flat)  # warm-up
            started = time.perf_counter()
            run(flat)
            timings.append(time.perf_counter() - started)
        _prefill_choice[key] = timings[1] < timings[0]
    return _prefill_choice[key]


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", kernel_operand(weight))
        self.register_buffer("scales", kernel_operand(scales.to(kernel_dtype(weight.device, dtype))))

    def int8_kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.weight, self.scales)

    def bf16_gemm(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat, self.weight.to(CPU_KERNEL_DTYPE) * self.scales[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            flat = kernel_operand(x.reshape(-1, self.in_features).to(CPU_KERNEL_DTYPE))
            use_gemm = flat.shape[0] >= PREFILL_ROWS and faster_as_bf16_gemm(self, flat)
            y = self.bf16_gemm(flat) if use_gemm else self.int8_kernel(flat)
            return y.to(x.dtype).reshape(*x.shape[:-1], -1)
        # On CUDA the dequantize fuses into the matmul under torch.compile (gpt-fast).
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class Int4Linear(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = kernel_operand(x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype))
        if x.device.type == "cpu":
            y = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.groupsize, self.scales_and_zeros)
        else:
            y = torch._weight_int4pack_mm(flat, self.packed, self.groupsize, self.scales_and_zeros)
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


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
