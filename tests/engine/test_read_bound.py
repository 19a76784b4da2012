"""engine.read_bound: every byte read, the right tensors counted, the bound's arithmetic, and the
benchmark's fractions of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import bench, read_bound
from engine.checkpoints import build_model
from tests.fixtures import random_model, tiny_args


def expected_xor(buffer: torch.Tensor) -> int:
    """The XOR of the buffer's 64-bit words and of its bytes past the last whole word."""
    raw = buffer.view(torch.uint8).numpy()
    whole = len(raw) // 8 * 8
    value = int(np.bitwise_xor.reduce(raw[:whole].view(np.uint64), initial=np.uint64(0)))
    for byte in raw[whole:]:
        value ^= int(byte)
    return value


def all_xor(buffers: list[torch.Tensor]) -> int:
    value = 0
    for buffer in buffers:
        value ^= expected_xor(buffer)
    return value


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_byte_of_every_buffer_is_read_once(threads):
    generator = torch.Generator().manual_seed(0)
    sizes = [1, 7, 8, 1001, 4096, 1 << 20]  # past a word, whole words, odd tails, shares of unequal size
    buffers = [torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator) for size in sizes]
    expected = all_xor(buffers)
    assert read_bound.read_buffers(buffers, threads) == expected
    # a changed byte anywhere, word or tail, changes the result: no part of any buffer is skipped
    for buffer, at in ((buffers[0], 0), (buffers[3], 1000), (buffers[3], 17), (buffers[5], (1 << 19) + 3)):
        buffer[at] ^= 0x40
        changed = all_xor(buffers)
        assert changed != expected and read_bound.read_buffers(buffers, threads) == changed
        buffer[at] ^= 0x40


def test_a_token_reads_every_weight_but_the_embedding_and_rope_tables():
    reference = random_model(tiny_args(dim=128, vocab_size=1008))
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    model = build_model(reference.args, state, torch.device("cpu"), torch.bfloat16, "int4")
    counted = {id(t) for t in read_bound.decode_weights(model)}
    names = dict(model.named_parameters()) | dict(model.named_buffers())
    left_out = {name for name, t in names.items() if id(t) not in counted}
    assert left_out == {"model.embed_tokens.weight", "rope_cos", "rope_sin"}
    assert "lm_head.packed" in names and "lm_head.scales_and_zeros" in names  # the int4 pack is what is read


def test_an_embedding_that_is_also_the_output_layer_is_read_in_full():
    model = random_model(tiny_args())
    model.lm_head.weight = model.model.embed_tokens.weight
    weights = read_bound.decode_weights(model)
    assert sum(t is model.model.embed_tokens.weight for t in weights) == 1


def test_the_bound_is_the_bytes_at_the_measured_rate():
    bound = read_bound.ReadBound(weight_bytes=2_000_000_000, bytes_per_position=1_000_000, gb_per_s=30.0)
    assert bound.tokens_per_s(0) == pytest.approx(15.0)
    assert bound.tokens_per_s(1000) == pytest.approx(10.0)  # the cache read as much again as the weights


def test_measure_counts_the_models_bytes_and_its_caches():
    model = random_model(tiny_args(dim=128, n_heads=4, n_kv_heads=2))
    bound = read_bound.measure(model, torch.bfloat16, repeats=3)
    assert bound.weight_bytes == sum(t.nbytes for t in read_bound.decode_weights(model))
    assert bound.bytes_per_position == 2 * model.args.n_layers * 2 * 32 * 2  # k and v, layers, kv heads, head_dim, bf16
    assert bound.gb_per_s > 0


def test_the_benchmark_sets_each_side_against_its_own_bytes_at_the_same_rate():
    row = {
        "read_bound": {"weight_bytes": 1_000, "bytes_per_position": 40, "gb_per_s": 1e-6},  # 1,000 bytes/s
        "kv_values_per_position": 10,
    }
    assert bench.fraction_of_bound(row, 0.5, depth=0) == pytest.approx(0.5)  # bound 1 token/s
    assert bench.fraction_of_bound(row, 0.5, depth=25) == pytest.approx(1.0)  # 2,000 bytes a token
    # llama.cpp's weights (500 bytes) and f16 cache (10 x 2 bytes a position), at our rate
    assert bench.fraction_of_bound(row, 1.0, 25, weight_bytes=500, kv_element_bytes=2) == pytest.approx(1.0)
    assert bench.fraction_of_bound({}, 1.0, 0) is None
    assert bench.bound_summary([(0.9, 0.8), (None, 0.7)]) == "-"
    assert bench.bound_summary([(0.9, 0.8), (0.95, 0.7)]) == "90% / 80%, 95% / 70%"
    assert bench.bound_summary([(0.9, 0.8), (0.95, 0.7), (0.8, 0.75)]) == "90% / 75% (medians)"
