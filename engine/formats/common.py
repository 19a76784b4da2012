"""What every checkpoint format shares: the error type, and readers that never unpickle.

.pth/.bin files go through `torch.load(weights_only=True)` (tensors and containers only);
a legacy bare pickle is refused before torch sees it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

TOKENIZER_FILE = "tokenizer.model"
# Tensors some checkpoints carry that the model recomputes.
IGNORED_TENSORS = re.compile(r"(^rope\.freqs$|rotary_emb\.inv_freq$)")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and the problem."""


def current_umask() -> int:
    """The process's umask (reading it means setting it: put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_folder(out_dir: Path, marker: str) -> Iterator[Path]:
    """A staging folder beside out_dir that replaces it when the block ends without error: a
    reader never sees half a checkpoint. Refuses to replace a non-empty folder that has no
    `marker` file (the format's config): that folder is not a checkpoint of this kind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise CheckpointError(
            f"{out_dir}: refusing to overwrite a folder that is not a checkpoint of this format (no {marker}); "
            "choose an empty or new one"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = current_umask()
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a model folder is not
    try:
        yield staging
        for file in staging.iterdir():  # some writers make private files; a model is readable
            file.chmod(0o666 & ~umask)
        if out_dir.exists():
            backup = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out_dir, backup)
            os.replace(staging, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def require(config: dict, key: str, path: Path):
    if key not in config:
        raise CheckpointError(f"{path}: missing field {key!r}")
    return config[key]


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated or corrupt?") from e


PICKLE_PROTOCOL_MARK = 0x80
"""The first byte of a pickle (protocol 2 and later): a legacy, pre-zip torch.save file starts with it."""


def read_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.bin file, loaded with weights_only=True: tensors and containers, no code."""
    if not zipfile.is_zipfile(path):
        try:
            with path.open("rb") as f:
                first = f.read(1)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e}") from e
        if first and first[0] == PICKLE_PROTOCOL_MARK:
            raise CheckpointError(
                f"{path}: refusing to load: a legacy-format PyTorch file (a bare pickle, not the zip archive "
                "torch.save has written since torch 1.6). A bare pickle can run code while it loads, so it is "
                "never read here. If you trust where it came from, re-save it with a current torch or convert "
                "it to safetensors."
            )
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refusing to load: the file holds Python objects other than tensors "
            f"(torch.load(weights_only=True) blocked it: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read PyTorch file ({e}); is it truncated or corrupt?") from e
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return value
