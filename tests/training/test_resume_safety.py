"""What the disk does to checkpoints: a damaged newest checkpoint is found by its checksums,
resuming falls back to the previous one and says so, and the run ends as if nothing had
happened. Missing optional dependencies are found before the first step."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.training.helpers import tiny_fit_config
from training import checkpointing as ckpt
from training.fit import TrainingError, train
from training.metrics import read_log

COLUMNS = ("step", "epoch", "tokens", "loss", "lr", "grad_norm")


class Stopped(Exception):
    """Stands for the process dying right after a step."""


def sections(tiny_checkpoint, max_steps: int) -> dict:
    return dict(
        model={"base": str(tiny_checkpoint)},
        train={"method": "full", "max_steps": max_steps, "micro_batch_size": 1, "grad_accum": 1},
        eval={"fim_examples": 0, "batches": 0},
        output={"save_every": 2, "keep": 2},
    )


def log_rows(run) -> list[dict]:
    return [{k: r[k] for k in COLUMNS} for r in read_log(run / "log.csv")]


@pytest.fixture(scope="module")
def runs(corpus, tiny_checkpoint, tmp_path_factory):
    """A run stopped after step 4 (checkpoints 2 and 4), and the same run done to step 6 in one go."""
    root = tmp_path_factory.mktemp("runs")

    def stop_after_step_4(step: int, _: dict) -> None:
        if step == 4:
            raise Stopped

    with pytest.raises(Stopped):
        train(tiny_fit_config(corpus, root / "stopped", **sections(tiny_checkpoint, 6)), on_step=stop_after_step_4)
    train(tiny_fit_config(corpus, root / "whole", **sections(tiny_checkpoint, 6)))
    return root


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (ckpt.TRAINABLE, truncate),
    "one flipped bit in the weights": (ckpt.TRAINABLE, flip_a_byte),
    "truncated optimizer": (ckpt.OPTIMIZER, truncate),
    "truncated rng state": ("rng-rank0.pt", truncate),
    "missing rng state": ("rng-rank0.pt", lambda p: p.unlink()),
    "missing checksums": (ckpt.CHECKSUMS, lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(runs, corpus, tiny_checkpoint, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    name, harm = DAMAGE[damage]
    newest = ckpt.step_dirs(run)[-1]
    assert newest.name == "step-00000004"
    harm(newest / name)
    assert ckpt.verify_checkpoint(newest) is not None
    said: list[str] = []
    assert ckpt.resumable_checkpoint(run, said.append).name == "step-00000002"
    assert any("step-00000004 cannot be resumed" in s for s in said)
    assert any("resuming from step-00000002" in s for s in said)
    train(tiny_fit_config(corpus, run, **sections(tiny_checkpoint, 6)))
    assert log_rows(run) == log_rows(runs / "whole")  # as if nothing had happened
    assert ckpt.verify_checkpoint(ckpt.step_dirs(run)[-1]) is None


def test_no_verified_checkpoint_is_an_error_not_a_fresh_start(runs, corpus, tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    for checkpoint in ckpt.step_dirs(run):
        truncate(checkpoint / ckpt.TRAINABLE)
    with pytest.raises(ckpt.ResumeError, match=r"no checkpoint verifies.*step-00000004.*step-00000002"):
        train(tiny_fit_config(corpus, run, **sections(tiny_checkpoint, 6)))


def test_a_corrupt_rng_state_that_verifies_is_a_clear_error(runs, tmp_path):
    checkpoint = tmp_path / "step"
    shutil.copytree(ckpt.step_dirs(runs / "stopped")[-1], checkpoint)
    (checkpoint / "rng-rank0.pt").write_bytes(b"not a torch file")
    with pytest.raises(ckpt.ResumeError, match=r"rng-rank0.pt: cannot read the random-number state"):
        ckpt.load_rng(checkpoint, 0)


def test_a_missing_optional_dependency_is_found_before_the_first_step(corpus, tiny_checkpoint, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(TrainingError, match=r"matplotlib is not installed .*pip install"):
        train(tiny_fit_config(corpus, tmp_path / "run", **sections(tiny_checkpoint, 4)))
    assert not (tmp_path / "run" / ckpt.CHECKPOINTS).exists()
