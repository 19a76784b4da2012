"""GPU paths: QLoRA over an nf4 base and bf16 autocast. Skipped without CUDA; on CPU, QLoRA is
refused with a clear message."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from engine.checkpoints import load_model
from tests.training.helpers import tiny_fit_config
from training.cli import main
from training.dataclass_io import ConfigError
from training.fit import train
from training.metrics import read_log

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")


def test_qlora_on_cpu_is_refused_with_a_reason(corpus, tiny_checkpoint, tmp_path):
    config = tiny_fit_config(
        corpus, tmp_path / "run", model={"base": str(tiny_checkpoint)}, train={"method": "qlora", "device": "cpu"}
    )
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        train(config)


@needs_cuda
@needs_bnb
def test_qlora_trains_and_exports_merged(corpus, tokenizer_path, tmp_path):
    from tests.fixtures import write_tiny_checkpoint

    # nf4 needs input widths that are multiples of its block size: a 128-wide model.
    base = write_tiny_checkpoint(tmp_path / "base", tokenizer_path, dim=128, n_heads=4, n_kv_heads=2)
    run = tmp_path / "run"
    config = tiny_fit_config(
        corpus,
        run,
        model={"base": str(base)},
        train={"method": "qlora", "device": "cuda", "max_steps": 6, "lr": 1e-2},
        lora={"rank": 4, "dropout": 0.0},
    )
    train(config)
    losses = [float(r["loss"]) for r in read_log(run / "log.csv")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "merged")]) == 0
    model, _, _ = load_model(tmp_path / "merged", device="cpu", dtype="float32")
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


@needs_cuda
def test_full_fine_tuning_with_bf16_autocast_on_cuda(corpus, tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    config = tiny_fit_config(
        corpus,
        run,
        model={"base": str(tiny_checkpoint)},
        train={"method": "full", "device": "cuda", "max_steps": 6, "precision": "bf16"},
    )
    train(config)
    losses = [float(r["loss"]) for r in read_log(run / "log.csv")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
