"""Checkpoint folders: which format, is it whole, and the model built from it.

Every format becomes the one internal layout (`LlamaForCausalLM` names, rotate-half
RoPE), each in its own module under engine/formats: Hugging Face (hf), Meta (meta), and
the project's own (native). This module detects the format, checks the tensors against
the config, picks device and dtype, swaps in quantized layers and builds the model.
All three keep the SentencePiece `tokenizer.model` beside the weights. Nothing is ever
unpickled (engine/formats/common.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.formats import hf, meta, native
from engine.formats.common import IGNORED_TENSORS, TOKENIZER_FILE, CheckpointError
from engine.formats.hf import args_from_hf_config, hf_config
from engine.formats.meta import META_SHARD_DIM, META_TO_HF
from engine.formats.native import save_checkpoint
from engine.machine import cpu_flags
from engine.model import ModelArgs, Transformer
from engine.options import TORCH_QUANTIZATIONS
from engine.quantize import build_quantized_linear, check_quantization, quantize_state_dict, quantized_linear_names
from engine.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)

NATIVE_CONFIG, NATIVE_WEIGHTS = native.CONFIG, native.WEIGHTS

__all__ = [
    "META_SHARD_DIM",
    "META_TO_HF",
    "NATIVE_CONFIG",
    "CheckpointError",
    "CheckpointInfo",
    "args_from_hf_config",
    "hf_config",
    "inspect_checkpoint",
    "load_model",
    "save_checkpoint",
]


@dataclass
class CheckpointInfo:
    path: Path
    format: str
    """"hf", "meta" or "native"."""
    args: ModelArgs
    tokenizer_path: Path
    quantization: str = "none"
    """For native checkpoints saved quantized: "int8" or "int4"."""


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Identify a checkpoint folder and read its configuration (no weights are read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a folder (config + weights + {TOKENIZER_FILE})")
    tokenizer_path = path / TOKENIZER_FILE
    quantization = "none"
    if (path / native.CONFIG).is_file():
        fmt = "native"
        args, quantization = native.read_args(path)
    elif (path / hf.CONFIG).is_file():
        fmt, args = "hf", hf.read_args(path)
    elif (path / meta.CONFIG).is_file():
        fmt, args = "meta", meta.read_args(path, tokenizer_path)
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint folder: expected {hf.CONFIG} (Hugging Face), {meta.CONFIG} (Meta) "
            f"or {native.CONFIG} (codellama-lsp)"
        )
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{path}: no {TOKENIZER_FILE} (the SentencePiece tokenizer) beside the weights")
    return CheckpointInfo(path, fmt, args, tokenizer_path, quantization)


def read_state_dict(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint in internal names (native quantized: portable form)."""
    if info.format == "meta":
        return meta.read_tensors(info.path, info.args)
    state = hf.read_tensors(info.path) if info.format == "hf" else native.read_tensors(info.path)
    return {k: v for k, v in state.items() if not IGNORED_TENSORS.search(k)}


def check_state_dict(info: CheckpointInfo, state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    """Raise a CheckpointError naming the first missing, unexpected or misshapen tensor."""
    source = info.path / (native.WEIGHTS if info.format == "native" else "")
    quantized = info.quantization != "none"
    if info.args.tie_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for name, shape in expected.items():
        if quantized and (name.endswith("proj.weight") or name == "lm_head.weight"):
            if name not in state or state[name].shape[0] != shape[0]:
                raise CheckpointError(f"{source}: quantized tensor {name!r} is missing or has the wrong shape")
            continue
        if name not in state:
            raise CheckpointError(f"{source}: tensor {name!r} is missing")
        if state[name].shape != shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {list(state[name].shape)}, but the config expects {list(shape)}"
            )
    allowed_extra = (".scales", ".scales_and_zeros") if quantized else ()
    unexpected = [k for k in state if k not in expected and not k.endswith(allowed_extra)]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r}; is this a Llama checkpoint?")


# ---- building the model ----


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this torch build")
    return device


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


LARGE_MODEL_FP32_BYTES = 1 << 30
"""From this size of fp32 weights, decode on CPU is memory-bound (see resolve_dtype)."""


def resolve_dtype(name: str, device: torch.device, args: ModelArgs) -> torch.dtype:
    """The compute dtype. `auto`: bf16 on GPU. On CPU, measured on both kinds of machine:

    - small models (fp32 weights under 1 GiB): fp32. Their decode is overhead-bound and ran
      faster in fp32 (shipped model, Xeon with AMX: 208 vs 156 tokens/s);
    - larger ones on a CPU with native bf16 (AMX or AVX512-BF16): bf16. Half the bytes to read
      per token, and prefill ran 3.5x fp32 on 7B-sized layers;
    - larger ones elsewhere: fp32 when the weights take under half the RAM (an AVX2 EPYC ran
      a bf16 prefill 6x slower than fp32), else bf16.

    An explicit bfloat16 on a CPU without native bf16 computes in fp32 when that fits and
    measures faster here (bf16_faster_here); quantized layers compute in bf16 regardless.
    """
    if name != "auto":
        if name not in TORCH_DTYPES:
            raise ValueError(f"unknown dtype {name!r}: expected auto or one of {', '.join(TORCH_DTYPES)}")
        dtype = TORCH_DTYPES[name]
        if dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16() and fp32_fits(args):
            if not bf16_faster_here(args):
                log.warning("--dtype bfloat16: this CPU has no native bf16 and fp32 measured faster: computing in fp32")
                return torch.float32
        return dtype
    if device.type == "cuda":
        return torch.bfloat16
    if 4 * parameter_count(args) < LARGE_MODEL_FP32_BYTES:
        return torch.float32
    if native_bf16():
        return torch.bfloat16
    return torch.float32 if fp32_fits(args) else torch.bfloat16


def parameter_count(args: ModelArgs) -> int:
    layers = args.n_layers * (4 * args.dim * args.dim + 3 * args.dim * args.hidden_dim)
    return layers + 2 * args.vocab_size * args.dim


def fp32_fits(args: ModelArgs) -> bool:
    """fp32 weights would take under half the machine's RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 4 * parameter_count(args) < ram / 2


def native_bf16() -> bool:
    """The CPU has bf16 matrix or dot-product instructions (AMX, AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags()[1])


def bf16_faster_here(args: ModelArgs, rows: int = 128) -> bool:
    """Time one FFN-sized matmul (a prefill chunk's) in bf16 and in fp32 on this CPU."""
    x, w = torch.randn(rows, args.dim), torch.randn(args.hidden_dim, args.dim)
    timings = []
    for dtype in (torch.bfloat16, torch.float32):
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(a, b)  # warm-up
        started = time.perf_counter()
        torch.nn.functional.linear(a, b)
        timings.append(time.perf_counter() - started)
    return timings[0] < timings[1]


def build_model(
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
) -> Transformer:
    """Assemble a model from a checked state dict, quantizing its Linears if asked."""
    with torch.device("meta"):
        model = Transformer(args)
    if quantization != "none":
        names = quantized_linear_names(model)
        already = any(k.endswith((".scales", ".scales_and_zeros")) for k in state)
        if quantization in TORCH_QUANTIZATIONS and not already:
            state = quantize_state_dict(state, names, quantization)
        for name in names:
            tensors = {key.rsplit(".", 1)[1]: state.pop(key) for key in list(state) if key.rsplit(".", 1)[0] == name}
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, build_quantized_linear(tensors, quantization, device, dtype))
    rest = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(rest, strict=False, assign=True)
    if args.tie_embeddings and quantization == "none":
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(args.max_seq_len, device)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if on_meta:
        raise CheckpointError(f"weights missing after load: {', '.join(on_meta[:5])}")
    return model.eval().requires_grad_(False)


def load_model(
    path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
) -> tuple[Transformer, Tokenizer, CheckpointInfo]:
    """Load any supported checkpoint folder, ready for inference."""
    info = inspect_checkpoint(path)
    target = resolve_device(device)
    check_quantization(quantize, target)
    if info.quantization != "none" and quantize not in ("none", info.quantization):
        raise CheckpointError(f"{info.path}: saved as {info.quantization}; it cannot be loaded as {quantize}")
    quantization = info.quantization if info.quantization != "none" else quantize
    try:
        tokenizer = Tokenizer(info.tokenizer_path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    state = read_state_dict(info)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Transformer(info.args).state_dict().items()}
    check_state_dict(info, state, expected)
    torch_dtype = resolve_dtype(dtype, target, info.args)
    return build_model(info.args, state, target, torch_dtype, quantization), tokenizer, info
