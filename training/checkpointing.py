"""Resumable training checkpoints, written atomically.

    RUN/checkpoints/step-00000200/
        trainable.safetensors   the trained tensors (all weights, or the LoRA adapters)
        optimizer.pt            AdamW state keyed by parameter name (tensors and numbers only)
        trainer_state.json      step, data position, scheduler, tokens seen, the config
        rng-rank0.pt ...        each rank's torch / CUDA / Python RNG state
        checksums.json          SHA-256 of each file above, written last

A checkpoint is assembled in a hidden temporary folder and renamed into place, so a
crash leaves either the previous checkpoint or the complete new one, never half of one.
What the disk does to it later (a truncated copy, a flipped bit) the checksums find:
resuming takes the newest checkpoint that verifies, and says which ones it passed over.
State dicts go through torch.distributed.checkpoint.state_dict, which gives full
(unsharded) tensors under FSDP and plain ones without it. Loading uses
torch.load(weights_only=True): nothing is unpickled but tensors and containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
CHECKSUMS = "checksums.json"
HASH_CHUNK = 16 * 2**20


class ResumeError(ValueError):
    """A checkpoint cannot be resumed; the message names the file."""


def is_main(rank: int) -> bool:
    return rank == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def step_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temporary folders never match), oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = step_dirs(run_dir)
    return dirs[-1] if dirs else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of every trainable parameter, on CPU (a collective under FSDP: all ranks call it)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def save_training_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    rank: int = 0,
    keep: int = 2,
    tied_keys: tuple[str, ...] = (),
) -> Path:
    """Write checkpoint `step` atomically; delete all but the newest `keep`. Every rank calls it."""
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / f"step-{step:08d}"
    staging = folder / f".step-{step:08d}.tmp"
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if is_main(rank):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), staging / f"rng-rank{rank}.pt")
    barrier()
    if is_main(rank):
        # safetensors refuses two names for one tensor: a tied output layer is re-tied on load.
        weights = {k: v.contiguous() for k, v in weights.items() if k not in tied_keys}
        save_file(weights, str(staging / TRAINABLE))
        torch.save(optim, staging / OPTIMIZER)
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")
        write_checksums(staging)
        shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step replaces it
        os.replace(staging, final)
        for old in step_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    sums = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")


def verify_checkpoint(checkpoint: Path) -> str | None:
    """Why the checkpoint cannot be trusted (a missing, truncated or changed file), or None."""
    path = checkpoint / CHECKSUMS
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing (a checkpoint written before checksums, or an incomplete copy)"
    except (OSError, ValueError) as e:
        return f"{path}: cannot read: {e}"
    if not isinstance(sums, dict) or TRAINER_STATE not in sums:
        return f"{path}: not a checkpoint's checksum list"
    for name, expected in sums.items():
        file = checkpoint / str(name)
        if "/" in str(name) or not file.is_file():
            return f"{file} is missing"
        try:
            if file_sha256(file) != expected:
                return f"{file} does not match its checksum (truncated or changed on disk)"
        except OSError as e:
            return f"{file}: cannot read: {e}"
    return None


def resumable_checkpoint(run_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; None when the run has none at all.

    Raises ResumeError when there are checkpoints but none verifies: starting over would
    silently throw the run away."""
    dirs = step_dirs(run_dir)
    problems = []
    for checkpoint in reversed(dirs):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            if problems:
                say(f"note: resuming from {checkpoint.name}, the newest checkpoint that verifies")
            return checkpoint
        say(f"warning: {checkpoint.name} cannot be resumed: {problem}")
        problems.append(f"{checkpoint.name}: {problem}")
    if problems:
        raise ResumeError(
            f"{Path(run_dir) / CHECKPOINTS}: no checkpoint verifies ({'; '.join(problems)}); "
            "use --output.resume false (or another output.dir) to start over"
        )
    return None


def read_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / TRAINER_STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path}: cannot read trainer state: {e}") from e


def load_trainable(checkpoint: Path, model: nn.Module, tied_keys: tuple[str, ...] = ()) -> None:
    """Put the saved trainable tensors into an unsharded model (before FSDP wraps it)."""
    path = checkpoint / TRAINABLE
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ResumeError(f"{path}: cannot read weights: {e}") from e
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(expected - set(weights) - set(tied_keys))
    unexpected = sorted(set(weights) - {name for name, _ in model.named_parameters()})
    if missing or unexpected:
        raise ResumeError(
            f"{path}: does not match the model being trained (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was the run started with a different model or train.method?"
        )
    model.load_state_dict(weights, strict=False)


def load_optimizer(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    path = checkpoint / OPTIMIZER
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ResumeError(f"{path}: cannot read optimizer state: {e}") from e
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def load_rng(checkpoint: Path, rank: int) -> None:
    path = checkpoint / f"rng-rank{rank}.pt"
    if not path.is_file():
        path = checkpoint / "rng-rank0.pt"  # resumed with more ranks than saved: not bit-exact
    try:
        set_rng_state(torch.load(path, weights_only=True))
    except Exception as e:  # missing, truncated, or not an RNG state
        raise ResumeError(f"{path}: cannot read the random-number state: {e}") from e
