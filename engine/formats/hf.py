"""Hugging Face checkpoints: config.json + model.safetensors, or shards with an index.

The internal layout is LlamaForCausalLM's, so tensors load as they are: this module only
reads the config and finds the weight files (never outside the folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.formats.common import CheckpointError, read_json, read_pickled_tensors, read_safetensors, require
from engine.model import ModelArgs

CONFIG = "config.json"


def read_args(path: Path) -> ModelArgs:
    return args_from_hf_config(read_json(path / CONFIG), path / CONFIG)


def args_from_hf_config(config: dict, path: Path) -> ModelArgs:
    model_type = config.get("model_type")
    if model_type != "llama":
        raise CheckpointError(
            f"{path}: unsupported architecture: model_type {model_type!r}; expected a Llama / Code Llama "
            "checkpoint (model_type 'llama', LlamaForCausalLM)"
        )
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        raise CheckpointError(f"{path}: unsupported Llama variant (hidden_act other than silu, or biases)")
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise CheckpointError(f"{path}: rope_scaling {scaling!r} is not supported (Code Llama uses none)")
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    try:
        return ModelArgs(
            dim=require(config, "hidden_size", path),
            n_layers=require(config, "num_hidden_layers", path),
            n_heads=require(config, "num_attention_heads", path),
            n_kv_heads=config.get("num_key_value_heads"),
            vocab_size=require(config, "vocab_size", path),
            hidden_dim=require(config, "intermediate_size", path),
            norm_eps=config.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            max_seq_len=config.get("max_position_embeddings", 16384),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def hf_config(args: ModelArgs) -> dict:
    """The inverse of args_from_hf_config: a Hugging Face LlamaConfig's fields."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
    }


def hf_weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            files = [path / name for name in sorted(set(weight_map.values()))]
            outside = [str(f) for f in files if not f.resolve().is_relative_to(path.resolve())]
            if outside:
                raise CheckpointError(f"{index}: weight files outside the checkpoint folder: {', '.join(outside)}")
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index}: weight file(s) missing: {', '.join(missing)}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise CheckpointError(
        f"{path}: no weights (model.safetensors, sharded safetensors with an index, or pytorch_model.bin)"
    )


def read_weight_files(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors(file) if file.suffix == ".safetensors" else read_pickled_tensors(file))
    return state


# One literal name map, Meta -> internal (Hugging Face) names; {} is the layer index.
def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_weight_files(hf_weight_files(path))
