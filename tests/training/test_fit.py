"""`fit` on tiny models: learning, exact resume, the long-context stage, logs and faults."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoints import load_model
from tests.fixtures import write_tiny_checkpoint
from tests.training.helpers import tiny_fit_config
from training import checkpointing as ckpt
from training import fit as fit_module
from training.cli import main
from training.config import load_config, shipped_configs
from training.export import rebuild_trained_model
from training.fit import TrainingError, lr_factor, train
from training.metrics import read_log
from training.modeling import build_model

TINY_SHAPE = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "tie_embeddings": True}


class Killed(Exception):
    """Stands for the process dying (SIGKILL) right after a step."""


def compared_columns(row: dict) -> dict:
    return {k: row[k] for k in ("step", "epoch", "tokens", "loss", "lr", "grad_norm", "val_loss", "fim_exact_match")}


def test_a_tiny_model_learns_from_scratch(corpus, tokenizer_path, tmp_path):
    config = tiny_fit_config(
        corpus,
        tmp_path / "run",
        model={"tokenizer": str(tokenizer_path), "args": TINY_SHAPE},
        train={"method": "full", "max_steps": 60, "micro_batch_size": 4, "grad_accum": 1, "lr": 1e-2},
        eval={"every": 30},
        output={"save_every": 30},
    )
    final = train(config)
    rows = read_log(tmp_path / "run" / "log.csv")
    losses = [float(r["loss"]) for r in rows]
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(losses) == 60 and len(val) == 2
    assert losses[0] > math.log(1000) - 0.3  # starts at chance level (vocabulary 1000)
    assert sum(losses[-10:]) / 10 < losses[0] - 1.2
    assert val[-1] < val[0] < math.log(1000) - 1.0
    assert 0.0 <= final["fim_exact_match"] <= 1.0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000
    assert [p.name for p in ckpt.step_dirs(tmp_path / "run")] == ["step-00000030", "step-00000060"]

    # The exported model is what the server loads: same weights (tied output layer), same logits.
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    model, tok, info = load_model(tmp_path / "model", dtype="float32")
    trained, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(tmp_path / "run"))
    assert info.args.tie_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    tokens = torch.tensor([tok.encode("def main():\n    return 0\n", bos=True)])
    with torch.no_grad():
        assert torch.equal(model(tokens), trained(tokens))


def test_a_killed_run_resumes_exactly(corpus, tiny_checkpoint, tmp_path):
    """LoRA with dropout: equality needs the weights, AdamW moments, schedule, data position
    and RNG all restored."""
    sections = dict(
        model={"base": str(tiny_checkpoint)},
        train={"method": "lora", "max_steps": 8},
        lora={"rank": 4, "dropout": 0.1},
        output={"save_every": 3, "keep": 1},
    )
    train(tiny_fit_config(corpus, tmp_path / "whole", **sections))

    def kill_after_step_5(step: int, _: dict) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(tiny_fit_config(corpus, tmp_path / "killed", **sections), on_step=kill_after_step_5)
    assert [p.name for p in ckpt.step_dirs(tmp_path / "killed")] == ["step-00000003"]
    train(tiny_fit_config(corpus, tmp_path / "killed", **sections))  # resumes from step 3

    whole = [compared_columns(r) for r in read_log(tmp_path / "whole" / "log.csv")]
    resumed = [compared_columns(r) for r in read_log(tmp_path / "killed" / "log.csv")]
    assert len(whole) == 8
    assert resumed == whole
    a = ckpt.load_file(str(tmp_path / "whole" / "checkpoints" / "step-00000008" / ckpt.TRAINABLE))
    b = ckpt.load_file(str(tmp_path / "killed" / "checkpoints" / "step-00000008" / ckpt.TRAINABLE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_B" in k and a[k].abs().sum() > 0 for k in a)  # the adapters did train


def test_resuming_with_a_different_model_is_refused(corpus, tiny_checkpoint, tokenizer_path, tmp_path):
    base = dict(model={"base": str(tiny_checkpoint)}, train={"method": "lora", "max_steps": 2})
    train(tiny_fit_config(corpus, tmp_path / "run", **base, output={"save_every": 2}))
    other = tiny_fit_config(corpus, tmp_path / "run", **{**base, "data": {"seq_len": 128}})
    with pytest.raises(ckpt.ResumeError, match=r"data\.seq_len = 256, not 128"):
        train(other)


def test_long_context_stage_changes_theta_and_sequence_length(corpus, tokenizer_path, tmp_path):
    # A Llama 2 style base: theta 10,000 and 1,024-token context.
    base = write_tiny_checkpoint(tmp_path / "base", tokenizer_path, rope_theta=10_000.0, max_seq_len=1024)
    assert load_model(base)[0].args.rope_theta == 10_000.0
    shipped = next(p for p in shipped_configs() if p.stem == "long_context")
    config = load_config(shipped, {"model": {"base": str(base)}, "data": {"dir": str(corpus)}})
    _, core, _, _ = build_model(config, torch.device("cpu"))
    assert core.args.rope_theta == 1e6 and core.args.max_seq_len == 16384
    assert core.rope_cos.shape[0] >= 16384

    # A short run of the stage (rows shortened to fit this test) saves the new theta.
    run = tmp_path / "long"
    short = tiny_fit_config(
        corpus,
        run,
        model={"base": str(base), "rope_theta": 1e6},
        train={"method": "full", "max_steps": 2, "lr": 2e-5, "gradient_checkpointing": True},
        data={"seq_len": 512},
    )
    train(short)
    state = ckpt.read_trainer_state(ckpt.latest_checkpoint(run))
    assert state["model_args"]["rope_theta"] == 1e6 and state["model_args"]["max_seq_len"] >= 512


def test_out_of_memory_says_what_to_lower(corpus, tiny_checkpoint, tmp_path, monkeypatch):
    def oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fit_module, "causal_lm_loss", oom)
    config = tiny_fit_config(corpus, tmp_path / "run", model={"base": str(tiny_checkpoint)}, train={"method": "full"})
    with pytest.raises(TrainingError, match=r"lower train.micro_batch_size \(now 2.*lower data.seq_len \(now 256\)"):
        train(config)


def test_schedule_warms_up_then_decays_to_a_thirtieth():
    factors = [lr_factor(s, warmup=10, max_steps=100, min_ratio=1 / 30) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert lr_factor(100, 10, 100, 1 / 30) == pytest.approx(1 / 30)


def test_fit_command_reports_bad_corpus(tmp_path, tokenizer_path, capsys):
    argv = ["fit", "--model.tokenizer", str(tokenizer_path), "--model.args", '{"dim": 64, "n_layers": 1, "n_heads": 4}']
    argv += ["--train.method", "full", "--data.dir", str(tmp_path / "nope"), "--output.dir", str(tmp_path / "r")]
    assert main(argv) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert not Path(tmp_path / "r" / "checkpoints").exists()


def test_a_process_killed_with_sigkill_resumes_exactly(corpus, tiny_checkpoint, tmp_path):
    """The real thing: `codellama-train fit` SIGKILLed mid-run, then started again."""
    steps = 16
    sections = dict(
        model={"base": str(tiny_checkpoint)},
        train={"method": "full", "max_steps": steps, "micro_batch_size": 1, "grad_accum": 1},
        eval={"fim_examples": 0},
        output={"save_every": 4, "keep": 1},
    )
    train(tiny_fit_config(corpus, tmp_path / "whole", **sections))

    config = tiny_fit_config(corpus, tmp_path / "killed", **sections)
    config_file = tmp_path / "killed.json"
    config_file.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "training", "fit", "--config", str(config_file)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "killed" / "checkpoints" / "step-00000004").exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    killed_at = int(ckpt.latest_checkpoint(tmp_path / "killed").name.split("-")[1])
    assert killed_at < steps

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {tmp_path / 'killed' / 'checkpoints'}" in resumed.stderr + resumed.stdout
    whole = [compared_columns(r) for r in read_log(tmp_path / "whole" / "log.csv")]
    again = [compared_columns(r) for r in read_log(tmp_path / "killed" / "log.csv")]
    assert again == whole and len(whole) == steps
