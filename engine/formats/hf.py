"""Hugging Face checkpoints: config.json + model.safetensors, or shards with an index.

The internal layout is LlamaForCausalLM's, so tensors load and save as they are: this
module reads the config and finds the weight files (never outside the folder), and writes
a folder that `transformers` and vLLM load (`save_hf`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.formats.common import (
    TOKENIZER_FILE,
    CheckpointError,
    atomic_folder,
    read_json,
    read_pickled_tensors,
    read_safetensors,
    require,
)
from engine.model import ModelArgs, Transformer
from engine.tokenizer import Tokenizer

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


def save_hf(out_dir: Path, model: Transformer, tokenizer_path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json + model.safetensors + tokenizer.model, atomically: a folder that
    `LlamaForCausalLM.from_pretrained` and `vllm serve` load (with the slow, SentencePiece
    tokenizer: tokenizer_config.json names LlamaTokenizer)."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors refuses shared tensors; transformers re-ties
    config = {**hf_config(model.args), "torch_dtype": str(dtype).removeprefix("torch.")}
    tok = Tokenizer(tokenizer_path)
    config |= {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,  # Code Llama's (and SentencePiece's) own handling of the leading space
        "model_max_length": model.args.max_seq_len,
    }
    with atomic_folder(out_dir, CONFIG) as staging:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        # vLLM and transformers' generate stop at any of these: <EOT> ends an infilling middle
        generation = {"bos_token_id": tok.bos_id, "eos_token_id": [tok.eos_id, tok.eot_id]}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
    return out_dir


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
