"""Writing a loaded model for another engine, or for ours: one entry point for
`codellama-lsp convert` and `codellama-train export`.

    native  model_args.json + model.safetensors (+ int8/int4): our server and engine
    hf      config.json + model.safetensors: transformers, vLLM, SGLang, TGI
    gguf    one .gguf file (f32, f16, bf16 or Q8_0): llama.cpp's server and tools

Every format carries the SentencePiece tokenizer.model (GGUF inside the file), so the
infilling tokens stay the ones the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.formats.common import CheckpointError
from engine.formats.gguf import save_gguf
from engine.formats.hf import save_hf
from engine.formats.native import save_checkpoint
from engine.model import Transformer
from engine.options import EXPORT_FORMATS

GGUF_TYPE_BY_DTYPE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def export_model(
    model: Transformer,
    tokenizer_path: str | Path,
    out: str | Path,
    fmt: str = "native",
    dtype: torch.dtype | None = None,
    quantize: str = "none",
    extra: dict | None = None,
) -> Path:
    """Write a full-precision model in one of EXPORT_FORMATS. quantize: native int8/int4, or
    gguf int8 (Q8_0); dtype: the floating-point type of the saved weights."""
    out, tokenizer_path = Path(out), Path(tokenizer_path)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    quantized = [name for name, tensor in model.state_dict().items() if not tensor.is_floating_point()]
    if quantized:
        raise CheckpointError(
            f"the model's layers are already quantized ({quantized[0]}, ...): convert its full-precision checkpoint"
        )
    if fmt == "native":
        return save_checkpoint(out, model, tokenizer_path, quantize=quantize, dtype=dtype, extra=extra)
    if fmt == "hf":
        if quantize != "none":
            raise ValueError("--format hf writes full precision (float32, bfloat16 or float16): drop --quantize")
        return save_hf(out, model, tokenizer_path, dtype or torch.float32)
    if quantize not in ("none", "int8"):
        raise ValueError(
            f"--format gguf writes Q8_0 for int8, not {quantize}; llama.cpp's llama-quantize makes the Q4 types"
        )
    file_type = "q8_0" if quantize == "int8" else GGUF_TYPE_BY_DTYPE[dtype or torch.float32]
    return save_gguf(
        out if out.suffix == ".gguf" else out.with_name(out.name + ".gguf"), model, tokenizer_path, file_type
    )
