"""The model against transformers' LlamaForCausalLM, the reference implementation."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.checkpoints import hf_config
from engine.model import MODEL_CONFIGS, KVCache, ModelArgs, Transformer
from tests.fixtures import random_model, tiny_args


def hf_reference(args: ModelArgs, state: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    config = LlamaConfig(**hf_config(args), attn_implementation="eager")
    reference = LlamaForCausalLM(config).eval()
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return reference


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_logits_match_transformers(n_kv_heads):
    args = tiny_args(n_kv_heads=n_kv_heads, rope_theta=1e6)
    model = random_model(args, seed=1)
    reference = hf_reference(args, model.state_dict())
    tokens = torch.randint(0, args.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)
        theirs = reference(tokens).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_cached_prefill_from_any_position_matches_full_forward():
    """The causal mask must be right when a prefill starts at a position > 0."""
    args = tiny_args()
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(args, max_seq_len=64, slots=2)
        pieces = []
        for start, end in [(0, 7), (7, 8), (8, 30), (30, 40)]:  # chunks, a single token, chunks
            pieces.append(model(tokens[:, start:end], start, cache, slot=1))
        cached = torch.cat(pieces, dim=1)
    assert (cached - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_last_only_returns_the_last_position(n_kv_heads):
    args = tiny_args(n_kv_heads=n_kv_heads)
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (1, 9))
    with torch.no_grad():
        full = model(tokens)[0, -1]
        without_cache = model(tokens, last_only=True)
        cache = KVCache(args, max_seq_len=16)
        last = model(tokens, 0, cache, last_only=True)
    assert last.shape == without_cache.shape == (1, 1, args.vocab_size)
    assert torch.allclose(last[0, -1], full, atol=1e-5)
    assert torch.allclose(without_cache[0, -1], full, atol=1e-5)


def test_last_only_prefill_leaves_the_cache_a_full_prefill_leaves():
    """The last layer computes one position's queries, attention and MLP, but every position's keys
    and values: a later chunk and a decode step then see exactly what they see after a full prefill."""
    args = tiny_args(n_kv_heads=2)
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    rows_into_last_mlp = []
    model.model.layers[-1].mlp.register_forward_hook(
        lambda module, inputs, out: rows_into_last_mlp.append(inputs[0].shape[1])
    )
    with torch.no_grad():
        full_cache, pruned_cache = KVCache(args, max_seq_len=32), KVCache(args, max_seq_len=32)
        model(tokens[:, :12], 0, full_cache)
        model(tokens[:, 12:25], 12, full_cache)
        model(tokens[:, :12], 0, pruned_cache, last_only=True)
        last = model(tokens[:, 12:25], 12, pruned_cache, last_only=True)  # from a position > 0: the mask path
        full = model(tokens[:, :25])[0, -1]
        for cache in (full_cache, pruned_cache):
            model(tokens[:, 25:], 25, cache)
    assert rows_into_last_mlp == [12, 13, 1, 1, 25, 5, 5]
    assert torch.allclose(last[0, -1], full, atol=1e-5)
    for layer in range(args.n_layers):
        assert torch.equal(pruned_cache.keys[layer], full_cache.keys[layer])
        assert torch.equal(pruned_cache.values[layer], full_cache.values[layer])


def test_code_llama_shapes():
    assert MODEL_CONFIGS["7B"].hidden_dim == 11008
    assert MODEL_CONFIGS["13B"].hidden_dim == 13824
    assert MODEL_CONFIGS["34B"].hidden_dim == 22016 and MODEL_CONFIGS["34B"].n_kv_heads == 8
    with torch.device("meta"):
        params = Transformer(MODEL_CONFIGS["7B"]).num_parameters()
    assert 6.6e9 < params < 6.8e9  # Code Llama 7B has 6.74B parameters


def test_model_args_reject_bad_values():
    with pytest.raises(ValueError, match="unknown ModelArgs field"):
        ModelArgs.from_dict({"dim": 64, "n_layer": 2})
    with pytest.raises(ValueError, match="not divisible by n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)


def test_cache_rejects_positions_past_its_end():
    args = tiny_args()
    model = random_model(args)
    cache = KVCache(args, max_seq_len=8)
    with pytest.raises(ValueError, match="past the KV cache length 8"):
        model(torch.zeros(1, 9, dtype=torch.long), 0, cache)
