"""Meta checkpoints: params.json + consolidated.NN.pth model-parallel shards.

Shards are merged along the dimension Meta split them on, names mapped by one literal
table to the internal (Hugging Face) ones, and q/k permuted from Meta's interleaved RoPE
pairs to rotate-half.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from engine.formats.common import IGNORED_TENSORS, CheckpointError, read_json, read_pickled_tensors, require
from engine.model import ModelArgs
from engine.tokenizer import Tokenizer, TokenizerError

CONFIG = "params.json"


def read_args(path: Path, tokenizer_path: Path) -> ModelArgs:
    return args_from_meta_params(read_json(path / CONFIG), path / CONFIG, tokenizer_path)


def args_from_meta_params(params: dict, path: Path, tokenizer_path: Path) -> ModelArgs:
    vocab_size = params.get("vocab_size", -1)
    if vocab_size is None or vocab_size <= 0:
        # Code Llama's params.json may leave it out: the tokenizer knows (the embedding is
        # checked against it when the weights are read).
        try:
            vocab_size = Tokenizer(tokenizer_path).vocab_size
        except TokenizerError as e:
            raise CheckpointError(f"{path}: no vocab_size, and {e}") from e
    try:
        return ModelArgs(
            dim=require(params, "dim", path),
            n_layers=require(params, "n_layers", path),
            n_heads=require(params, "n_heads", path),
            n_kv_heads=params.get("n_kv_heads"),
            vocab_size=vocab_size,
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=float(params.get("rope_theta", 10000.0)),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


# One literal name map, Meta -> internal (Hugging Face) names; {} is the layer index.
META_TO_HF = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{}.attention.wq.weight": "model.layers.{}.self_attn.q_proj.weight",
    "layers.{}.attention.wk.weight": "model.layers.{}.self_attn.k_proj.weight",
    "layers.{}.attention.wv.weight": "model.layers.{}.self_attn.v_proj.weight",
    "layers.{}.attention.wo.weight": "model.layers.{}.self_attn.o_proj.weight",
    "layers.{}.feed_forward.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "layers.{}.feed_forward.w2.weight": "model.layers.{}.mlp.down_proj.weight",
    "layers.{}.feed_forward.w3.weight": "model.layers.{}.mlp.up_proj.weight",
    "layers.{}.attention_norm.weight": "model.layers.{}.input_layernorm.weight",
    "layers.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
}
# Dimension along which model-parallel shards split each Meta tensor; absent = replicated.
META_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def meta_to_hf_permutation(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from Meta's interleaved RoPE pairs to rotate-half halves."""
    rows, dim = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def read_tensors(path: Path, args: ModelArgs) -> dict[str, torch.Tensor]:
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path}: no consolidated.NN.pth weight shards beside params.json")
    loaded = [read_pickled_tensors(shard) for shard in shards]
    state = {}
    for name in loaded[0]:
        if IGNORED_TENSORS.search(name):
            continue
        parts = [shard.get(name) for shard in loaded]
        if any(p is None for p in parts):
            raise CheckpointError(f"{path}: tensor {name!r} is missing from some of the {len(shards)} shards")
        kind = name.split(".")[-2]
        dim = META_SHARD_DIM.get(kind)
        tensor = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
        generic = re.sub(r"^layers\.\d+\.", "layers.{}.", name)
        if generic not in META_TO_HF:
            raise CheckpointError(f"{shards[0]}: unexpected tensor {name!r}; is this a Llama checkpoint?")
        layer = re.match(r"^layers\.(\d+)\.", name)
        target = META_TO_HF[generic].format(layer.group(1) if layer else "")
        if kind == "wq":
            tensor = meta_to_hf_permutation(tensor, args.n_heads)
        elif kind == "wk":
            tensor = meta_to_hf_permutation(tensor, args.n_kv_heads)
        state[target] = tensor
    return state
