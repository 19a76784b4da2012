"""FSDP under torchrun: two CPU processes (gloo) train like one process with the same batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch.distributed as dist

from tests.training.helpers import tiny_fit_config
from training import checkpointing as ckpt
from training.export import rebuild_trained_model
from training.fit import train
from training.metrics import read_log


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_world_size_2_matches_one_process(method, corpus, tiny_checkpoint, tmp_path):
    steps = 3
    flags = [
        "--model.base", str(tiny_checkpoint), "--data.dir", str(corpus), "--data.seq_len", "256",
        "--train.method", method, "--lora.dropout", "0", "--train.max_steps", str(steps),
        "--train.micro_batch_size", "1",
        "--train.grad_accum", "1", "--train.lr", "3e-3", "--train.num_threads", "1", "--train.device", "cpu",
        "--eval.every", "0", "--eval.batches", "2", "--eval.fim_examples", "2", "--eval.fim_max_new_tokens", "6",
        "--eval.fim_context_chars", "200", "--output.dir", str(tmp_path / "fsdp"), "--output.save_every", "3",
        "--output.log_every", "1", "--output.progress", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # A session of its own: if anything hangs, the launcher and both workers are killed together.
    launcher = subprocess.Popen(
        [*command, "-m", "training", "fit", *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, output[-5000:]
    assert "on cpu x2" in output

    # One process seeing the same rows per step: rank r's row = micro-batch r of an accumulation.
    single = tiny_fit_config(
        corpus,
        tmp_path / "single",
        model={"base": str(tiny_checkpoint)},
        train={"method": method, "max_steps": steps, "micro_batch_size": 1, "grad_accum": 2, "lr": 3e-3},
        lora={"dropout": 0.0},
        eval={"batches": 2, "fim_examples": 2, "fim_max_new_tokens": 6},
        output={"save_every": 3},
    )
    # Held-out batches are per rank: two ranks x 2 batches = one process x 4 batches.
    single.eval.batches = 4
    train(single)

    sharded_log, single_log = read_log(tmp_path / "fsdp" / "log.csv"), read_log(tmp_path / "single" / "log.csv")
    assert [r["step"] for r in sharded_log] == [str(s) for s in range(1, steps + 1)]
    for a, b in zip(sharded_log, single_log, strict=True):
        for column in ("loss", "grad_norm", "lr"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6), (column, a, b)
    assert float(sharded_log[-1]["val_loss"]) == pytest.approx(float(single_log[-1]["val_loss"]), rel=1e-4)
    assert sharded_log[-1]["fim_exact_match"] == single_log[-1]["fim_exact_match"] != ""

    # The sharded run's checkpoint holds full tensors: it exports like any other.
    sharded, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(tmp_path / "fsdp"))
    one, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(tmp_path / "single"))
    for (name, p), (_, q) in zip(sharded.named_parameters(), one.named_parameters(), strict=True):
        assert p.shape == q.shape and (p - q).abs().max() < 1e-4, name
