"""The project's own checkpoints: model_args.json + model.safetensors (+ tokenizer.model).

Full precision, or int8/int4 in the portable form of engine.quantize (loaded without
quantizing again). Written atomically: what `codellama-train export` and
`codellama-lsp convert` produce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.formats.common import TOKENIZER_FILE, CheckpointError, atomic_folder, read_json, read_safetensors
from engine.model import ModelArgs, Transformer
from engine.options import SAVED_QUANTIZATIONS
from engine.quantize import quantize_state_dict, quantized_linear_names

CONFIG = "model_args.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def read_args(path: Path) -> tuple[ModelArgs, str]:
    """(args, quantization) from the config."""
    config = read_json(path / CONFIG)
    quantization = config.get("quantization", "none")
    try:
        args = ModelArgs.from_dict(config["model_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: bad model_args: {e}") from e
    if quantization not in SAVED_QUANTIZATIONS:
        raise CheckpointError(f"{path / CONFIG}: unknown quantization {quantization!r}")
    return args, quantization


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS}")
    return read_safetensors(weights)


def save_checkpoint(
    out_dir: str | Path,
    model: Transformer,
    tokenizer_path: str | Path,
    quantize: str = "none",
    dtype: torch.dtype | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a full-precision model as a codellama-lsp checkpoint, atomically.

    quantize="int8"/"int4" stores the portable quantized weights (loaded without
    re-quantizing); dtype casts the floating-point tensors (e.g. bf16 to halve the size).
    """
    out_dir = Path(out_dir)
    if quantize not in SAVED_QUANTIZATIONS:
        raise ValueError(f"cannot save {quantize!r}: only none, int8 and int4 are saved; nf4 is made at load time")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors refuses shared tensors; the loader re-ties
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if quantize != "none":
        if model.args.tie_embeddings:  # quantized, the output layer is a copy of its own
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        names = [n for n in quantized_linear_names(model) if f"{n}.weight" in state]
        state = quantize_state_dict(state, names, quantize)
        if model.args.tie_embeddings and "lm_head.weight" in state and state["lm_head.weight"].is_floating_point():
            state.pop("lm_head.weight")  # int4 could not pack it: it stays tied
    config = {
        "format": "codellama-lsp",
        "version": FORMAT_VERSION,
        "model_args": model.args.to_dict(),
        "quantization": quantize,
        **(extra or {}),
    }
    with atomic_folder(out_dir, CONFIG) as staging:
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / WEIGHTS))
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
    return out_dir
