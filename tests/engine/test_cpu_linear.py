"""fp32 linear layers on CPU (engine.cpu_linear): weights in column tiles, prefill by oneDNN's GEMM
where it measured faster."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import engine.cpu_linear as cpu_linear
from engine import c_library
from engine.cpu_decode import CpuDecode
from engine.cpu_linear import (
    Fp32CpuLinear,
    TiledFp32Linear,
    column_tile,
    onednn_linear_works,
    use_fp32_cpu_layers,
    use_onednn_prefill,
)
from engine.generate import prefill
from engine.huge_pages import HUGE_PAGE, huge_pages_usable, use_huge_pages
from engine.model import KVCache
from engine.prefill_choice import PREFILL_ROWS, choice_key
from tests.fixtures import random_model, tiny_args

needs_onednn = pytest.mark.skipif(not onednn_linear_works(), reason="this torch has no oneDNN linear op")


@pytest.fixture
def choices(tmp_path, monkeypatch):
    from engine import prefill_choice

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    prefill_choice.forget()
    prefill_choice.load_choices()
    yield prefill_choice._choices
    prefill_choice.forget()


@needs_onednn
def test_the_projections_are_swapped_and_the_output_layer_is_not():
    model = random_model(tiny_args(dim=128, n_heads=4))
    reference = random_model(tiny_args(dim=128, n_heads=4))
    projections = sum(type(m) is nn.Linear for n, m in model.named_modules() if n != "lm_head")
    assert use_onednn_prefill(model) == projections > 0
    assert type(model.lm_head) is nn.Linear and type(model.model.layers[0].mlp.up_proj) is Fp32CpuLinear
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert use_onednn_prefill(model) == 0  # (done already)
    assert use_onednn_prefill(random_model(tiny_args(dim=128, n_heads=4)).bfloat16()) == 0  # fp32 only


@needs_onednn
@pytest.mark.parametrize("gemm", [False, True])
def test_either_choice_computes_the_linear(choices, monkeypatch, gemm):
    layer = nn.Linear(256, 96, bias=False)
    use_onednn_prefill(nn.Sequential(layer))
    x = torch.randn(PREFILL_ROWS + 3, 256)
    choices[choice_key(layer, len(x))] = gemm
    used = []
    for name in ("kernel", "gemm"):
        original = getattr(layer, name)
        monkeypatch.setattr(layer, name, lambda flat, f=original, n=name: used.append(n) or f(flat))
    with torch.inference_mode():
        got = layer(x.view(1, -1, 256))
    torch.testing.assert_close(got, F.linear(x, layer.weight).view(1, -1, 96), rtol=1e-5, atol=1e-5)
    assert used == ["gemm" if gemm else "kernel"]


@needs_onednn
def test_training_takes_the_differentiable_path(choices):
    layer = nn.Linear(256, 96, bias=False)
    use_onednn_prefill(nn.Sequential(layer))
    x = torch.randn(PREFILL_ROWS + 3, 256, requires_grad=True)
    choices[choice_key(layer, len(x))] = True
    layer(x).sum().backward()  # oneDNN's op has no backward: it must not have been used
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))


def test_tiles_are_whole_vectors_that_divide_the_input():
    assert column_tile(4096) == 1024 and column_tile(11008) == 688 and column_tile(13824) == 864  # 7B, 13B
    assert column_tile(384) == 384  # no wider than a tile: row-major
    assert column_tile(1032) == 1032  # 8 x 129: no whole number of 16-float vectors divides it
    assert column_tile(144, widest=32) == 16


@pytest.mark.parametrize("gemm", [False, pytest.param(True, marks=needs_onednn)])
@pytest.mark.parametrize("rows", [1, PREFILL_ROWS + 3])
def test_a_tiled_layer_holds_the_weight_and_computes_the_linear(choices, monkeypatch, gemm, rows):
    weight = torch.randn(96, 144)
    layer = TiledFp32Linear(weight, widest=32)
    assert layer.tile == 16 and layer.tiles.shape == (9, 96, 16)
    assert torch.equal(layer.tiles[2], weight[:, 32:48]) and torch.equal(layer.weight, weight)
    assert torch.equal(layer.state_dict()["weight"], weight) and list(layer.state_dict()) == ["weight"]
    x = torch.randn(rows, 144)
    choices[choice_key(layer, rows)] = gemm
    used = []
    for name in ("kernel", "gemm"):
        original = getattr(layer, name)
        monkeypatch.setattr(layer, name, lambda flat, f=original, n=name: used.append(n) or f(flat))
    with torch.inference_mode():
        got = layer(x.view(1, rows, 144))
    torch.testing.assert_close(got, F.linear(x, weight).view(1, rows, 96), rtol=1e-5, atol=1e-5)
    assert used == ["gemm" if gemm and rows > PREFILL_ROWS else "kernel"]


def test_every_fp32_layer_is_tiled_but_one_tied_to_the_embedding():
    model = random_model(tiny_args(dim=128, n_heads=4))
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert use_fp32_cpu_layers(model, widest=32) == linears
    assert type(model.lm_head) is TiledFp32Linear and model.model.layers[0].mlp.up_proj.tile == 32
    tied = random_model(tiny_args(dim=128, n_heads=4))
    tied.lm_head.weight = tied.model.embed_tokens.weight
    assert use_fp32_cpu_layers(tied, widest=32) == linears - 1 and type(tied.lm_head) is nn.Linear
    assert use_fp32_cpu_layers(random_model(tiny_args(dim=128, n_heads=4)).bfloat16()) == 0  # fp32 only


@needs_onednn
@pytest.mark.parametrize("why", ["no room for the copies", "no C decode step"])
def test_the_layers_stay_row_major_without_room_or_a_c_step(monkeypatch, why):
    if why == "no room for the copies":
        monkeypatch.setattr(cpu_linear, "room_for", lambda nbytes: False)
    else:
        monkeypatch.setattr(c_library, "load_library", lambda: (_ for _ in ()).throw(RuntimeError("no C compiler")))
    model = random_model(tiny_args(dim=128, n_heads=4))
    assert use_fp32_cpu_layers(model, widest=32) == 0
    assert type(model.model.layers[0].mlp.up_proj) is Fp32CpuLinear and type(model.lm_head) is nn.Linear


def test_each_old_weight_is_let_go_before_the_next_copy(monkeypatch):
    model = random_model(tiny_args(dim=128, n_heads=4))
    old = [weakref.ref(m.weight) for m in model.modules() if type(m) is nn.Linear]
    alive, make = [], TiledFp32Linear.__init__

    def counting(self, weight, widest):
        alive.append(sum(ref() is not None for ref in old))
        make(self, weight, widest)

    monkeypatch.setattr(TiledFp32Linear, "__init__", counting)
    use_fp32_cpu_layers(model, widest=32)
    assert alive == list(range(len(old), 0, -1))  # the peak: one layer more, not all of them


@pytest.mark.skipif(not huge_pages_usable(), reason="no transparent huge pages here")
def test_tiles_made_in_huge_pages_are_not_copied_again():
    model = random_model(tiny_args(dim=512, hidden_dim=1024))  # a 2 MB MLP weight: tiled in huge pages
    use_fp32_cpu_layers(model)
    tiles = model.model.layers[0].mlp.up_proj.tiles
    address = tiles.data_ptr()
    assert address % HUGE_PAGE == 0
    use_huge_pages(model)
    assert model.model.layers[0].mlp.up_proj.tiles.data_ptr() == address


def tiled_by_32(model: nn.Module) -> int:
    return use_fp32_cpu_layers(model, widest=32)


@pytest.mark.parametrize("change", [pytest.param(use_onednn_prefill, marks=needs_onednn), tiled_by_32])
def test_a_changed_model_prefills_and_decodes_as_before(choices, change):
    # row-major with oneDNN's prefill, or tiled (its prefill one oneDNN GEMM per tile)
    model = random_model(tiny_args(dim=128, n_heads=4), seed=3)
    reference = random_model(tiny_args(dim=128, n_heads=4), seed=3)
    assert change(model) > 0
    for layer in model.modules():
        if isinstance(layer, (Fp32CpuLinear, TiledFp32Linear)):
            for rows in (64, 32):
                choices[choice_key(layer, rows)] = True
    prompt = list(range(5, 75))
    outputs = []
    for m in (model, reference):
        cache = KVCache(m.args, 128, slots=1)
        logits, _ = prefill(m, prompt, 0, cache, 0)
        outputs.append((logits, cache.keys[1].clone(), CpuDecode(m)(7, len(prompt), cache, 0)))
    for got, expected in zip(*outputs, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
