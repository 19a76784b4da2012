"""Weights and KV cache moved into huge-page memory: same values, same outputs, ties kept, the
checkpoint's file mapping let go, and nothing moved where memory is short."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

import engine.huge_pages as huge_pages
from engine.checkpoints import load_model
from engine.huge_pages import HUGE_PAGE, huge_page_copy, use_huge_pages
from engine.loader import load_engine
from engine.session import InfillEngine
from tests.fixtures import random_model, tiny_args

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux's")


def transparent_huge_pages_mode() -> str:
    """The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled ("" where there is none)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


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


def test_a_copy_has_the_same_values_on_a_huge_page_boundary():
    tensor = torch.randn(3, HUGE_PAGE // 4 + 5)  # a little over three huge pages of float32
    copy = huge_page_copy(tensor)
    assert copy.data_ptr() % HUGE_PAGE == 0
    assert copy.dtype == tensor.dtype and copy.shape == tensor.shape and copy.is_contiguous()
    assert torch.equal(copy, tensor) and copy.data_ptr() != tensor.data_ptr()
    int8 = torch.randint(-128, 128, (HUGE_PAGE + 7,), dtype=torch.int8)
    assert torch.equal(huge_page_copy(int8), int8)


@linux_only
@pytest.mark.skipif(transparent_huge_pages_mode() not in ("always", "madvise"), reason="huge pages are off here")
def test_the_copy_is_in_huge_pages_where_the_kernel_allows_them():
    copy = huge_page_copy(torch.ones(4 * HUGE_PAGE // 4))
    assert smaps_field(copy.data_ptr(), "AnonHugePages") >= HUGE_PAGE // 1024


def test_the_model_computes_the_same_after_moving_and_ties_stay_tied():
    args = tiny_args(dim=512, hidden_dim=1024)  # the MLP weights are whole huge pages in float32
    model = random_model(args).eval()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as some checkpoints are
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        before = model(tokens)
    up = model.model.layers[0].mlp.up_proj.weight
    keys = [torch.zeros(HUGE_PAGE // 2), torch.zeros(10)]
    moved = use_huge_pages(model, [keys])
    assert moved >= up.nbytes + keys[0].nbytes
    assert model.model.layers[0].mlp.up_proj.weight is up  # the same Parameter, new memory
    assert up.data_ptr() % HUGE_PAGE == 0 and keys[0].data_ptr() % HUGE_PAGE == 0
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(tokens), before)


@linux_only
def test_nothing_points_into_the_checkpoint_file_after_moving(tiny_checkpoint):
    model, _, _ = load_model(tiny_checkpoint, "cpu", "float32")
    weights = tiny_checkpoint / "model.safetensors"
    assert file_mappings(weights) > 0  # safetensors maps the file; the weights are that mapping
    use_huge_pages(model)
    gc.collect()
    assert file_mappings(weights) == 0
    model(torch.tensor([[1, 2, 3]]))  # and the model still runs from its own memory


def test_nothing_moves_where_memory_is_short(monkeypatch):
    model = random_model(tiny_args(dim=512, hidden_dim=1024))
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    monkeypatch.setattr(huge_pages, "available_memory", lambda: huge_pages.MEMORY_MARGIN)
    assert use_huge_pages(model) == 0
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before


def test_load_engine_moves_weights_and_cache_and_completes_as_before(tiny_checkpoint, monkeypatch):
    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu", "float32")
    expected = InfillEngine(model, tokenizer, max_seq_len=256, cache_slots=1).complete("def f(x):\n    return ", "\n")
    calls = []
    monkeypatch.setattr("engine.loader.use_huge_pages", lambda *a: calls.append(a) or use_huge_pages(*a))
    loaded = load_engine(tiny_checkpoint, "cpu", "float32", max_seq_len=256, cache_slots=1)
    ((module, (keys, values)),) = calls
    assert module is loaded.engine.model and keys is loaded.engine.cache.keys and values is loaded.engine.cache.values
    assert loaded.engine.complete("def f(x):\n    return ", "\n").text == expected.text


def test_a_view_into_a_bigger_tensor_stays_where_it_is():
    model = random_model(tiny_args(dim=512, hidden_dim=1024))
    base = torch.randn(2 * HUGE_PAGE // 4)
    view = base[: HUGE_PAGE // 4]
    lists = [[view]]
    use_huge_pages(model, lists)
    assert lists[0][0] is view  # copying it would keep its memory twice (base still holds it)
