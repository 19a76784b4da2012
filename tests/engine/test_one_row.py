"""One-row linears (the compiled CPU decode step's form of a layer) compute what the layer does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.one_row import one_row_linear
from engine.quantize import Int8Linear, quantize_int8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float_layer_gives_its_own_product(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(96, 160, bias=False).to(dtype)
    x = torch.randn(1, 1, 96, dtype=dtype)
    got = one_row_linear(layer, x)
    assert got.shape == (1, 1, 160) and got.dtype == dtype
    # Both sum in fp32; in another order, and bf16 rounds the result.
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(got, layer(x), **tolerance)


def test_the_compiled_sum_is_the_layers_product():
    torch.manual_seed(1)
    layer = nn.Linear(384, 1024, bias=False)
    x = torch.randn(1, 1, 384)
    compiled = torch.compile(one_row_linear, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(layer, x), layer(x), rtol=1e-5, atol=1e-5)


def test_other_layers_are_called_as_they_are():
    torch.manual_seed(2)
    with_bias = nn.Linear(64, 32)
    quantized = Int8Linear(**quantize_int8(torch.randn(32, 64)), dtype=torch.float32)
    x = torch.randn(1, 1, 64)
    for layer in (with_bias, quantized):
        assert torch.equal(one_row_linear(layer, x), layer(x))
