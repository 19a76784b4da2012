"""Weights and KV cache in huge-page memory: same values, same outputs, ties kept, the
checkpoint's file mapping let go, and nothing moved where it cannot or should not be."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest
import torch
from torch import nn

import engine.huge_pages as huge_pages
from engine.checkpoints import load_model
from engine.huge_pages import HUGE_PAGE, huge_page_copy, huge_page_zeros, huge_pages_usable, use_huge_pages
from engine.loader import load_engine
from engine.model import KVCache
from engine.session import InfillEngine
from tests.fixtures import random_model, tiny_args

needs_huge_pages = pytest.mark.skipif(not huge_pages_usable(), reason="no transparent huge pages here")


def smaps_field(address: int, field: str) -> int:
    """/proc/self/smaps's `field` (kB) for the mapping that holds address."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def file_mappings(path: Path) -> int:
    return sum(str(path.resolve()) in line for line in Path("/proc/self/maps").read_text().splitlines())


def big_model() -> nn.Module:
    return random_model(tiny_args(dim=512, hidden_dim=1024))  # the MLP weights are whole huge pages in float32


def test_a_copy_has_the_same_values_on_a_huge_page_boundary():
    tensor = torch.randn(3, HUGE_PAGE // 4 + 5)  # a little over three huge pages of float32
    copy = huge_page_copy(tensor)
    assert copy.data_ptr() % HUGE_PAGE == 0
    assert copy.dtype == tensor.dtype and copy.shape == tensor.shape and copy.is_contiguous()
    assert torch.equal(copy, tensor) and copy.data_ptr() != tensor.data_ptr()
    int8 = torch.randint(-128, 128, (HUGE_PAGE + 7,), dtype=torch.int8)
    assert torch.equal(huge_page_copy(int8), int8)


@needs_huge_pages
def test_the_copy_is_in_huge_pages_where_the_kernel_gives_them():
    copy = huge_page_copy(torch.ones(4 * HUGE_PAGE // 4))
    assert smaps_field(copy.data_ptr(), "AnonHugePages") >= HUGE_PAGE // 1024


@needs_huge_pages
def test_the_model_computes_the_same_after_moving_and_a_tied_weight_moves_once():
    model = big_model().eval()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as some checkpoints are
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        before = model(tokens)
    up = model.model.layers[0].mlp.up_proj.weight
    unique_big = {p.data_ptr(): p.nbytes for p in model.parameters() if p.nbytes >= HUGE_PAGE}
    assert use_huge_pages(model) == sum(unique_big.values())  # the tied weight counted (and copied) once
    assert model.model.layers[0].mlp.up_proj.weight is up and up.data_ptr() % HUGE_PAGE == 0
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(tokens), before)


@needs_huge_pages
def test_nothing_points_into_the_checkpoint_file_after_moving(tiny_checkpoint):
    model, _, _ = load_model(tiny_checkpoint, "cpu", "float32")
    weights = tiny_checkpoint / "model.safetensors"
    assert file_mappings(weights) > 0  # safetensors maps the file; the weights are that mapping
    use_huge_pages(model)
    gc.collect()
    assert file_mappings(weights) == 0
    model(torch.tensor([[1, 2, 3]]))  # and the model still runs from its own memory


@needs_huge_pages
def test_a_kv_cache_starts_zeroed_in_huge_page_memory():
    args = tiny_args(dim=512, n_heads=4, n_kv_heads=4)
    cache = KVCache(args, 1024, slots=1)  # 4 heads x 1,024 positions x 128 floats: 2 MB a layer
    for tensor in (*cache.keys, *cache.values):
        assert tensor.data_ptr() % HUGE_PAGE == 0 and not tensor.any()
    cache.update(0, 0, 3, torch.ones(1, 4, 2, 128), torch.ones(1, 4, 2, 128))
    assert cache.keys[0][0, :, 3:5].eq(1).all() and cache.keys[0].sum() == 4 * 2 * 128


def test_nothing_moves_where_memory_is_short(monkeypatch):
    model = big_model()
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    monkeypatch.setattr(huge_pages, "huge_pages_usable", lambda: True)
    monkeypatch.setattr(huge_pages, "available_memory", lambda: huge_pages.MEMORY_MARGIN)
    assert use_huge_pages(model) == 0
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before


def test_nothing_is_copied_where_the_kernel_gives_no_huge_pages(monkeypatch):
    model = big_model()
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    monkeypatch.setattr(huge_pages, "huge_pages_usable", lambda: False)
    assert use_huge_pages(model) == 0
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before
    zeros = huge_page_zeros((HUGE_PAGE,), "cpu", torch.float32)
    assert zeros.untyped_storage().nbytes() == zeros.nbytes and not zeros.any()  # torch's own memory


def test_a_tensor_whose_copy_cannot_be_had_stays_where_it_is(monkeypatch):
    def no_memory(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    model = big_model()
    up = model.model.layers[0].mlp.up_proj.weight
    before = up.data_ptr()
    monkeypatch.setattr(huge_pages, "huge_pages_usable", lambda: True)
    monkeypatch.setattr(mmap, "mmap", no_memory)
    assert use_huge_pages(model) == 0  # no error: the load goes on in 4 KB pages
    assert up.data_ptr() == before


def test_a_view_into_a_bigger_tensor_stays_where_it_is(monkeypatch):
    monkeypatch.setattr(huge_pages, "huge_pages_usable", lambda: True)
    holder = nn.Module()
    base = torch.randn(2 * HUGE_PAGE // 4)
    holder.register_buffer("view", base[: HUGE_PAGE // 4])
    view = holder.view
    assert use_huge_pages(holder) == 0
    assert holder.view is view  # copying it would keep its memory twice (base still holds it)


def test_load_engine_moves_the_weights_before_timing_kernels_and_completes_as_before(tiny_checkpoint, monkeypatch):
    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu", "float32")
    expected = InfillEngine(model, tokenizer, max_seq_len=256, cache_slots=1).complete("def f(x):\n    return ", "\n")
    calls = []
    monkeypatch.setattr("engine.loader.use_huge_pages", lambda module: calls.append(("move", module)) or 0)
    monkeypatch.setattr("engine.loader.tune_prefill", lambda module: calls.append(("tune", module)) or 0)
    loaded = load_engine(tiny_checkpoint, "cpu", "float32", max_seq_len=256, cache_slots=1)
    assert calls == [("move", loaded.engine.model), ("tune", loaded.engine.model)]
    assert loaded.engine.complete("def f(x):\n    return ", "\n").text == expected.text
