"""What every checkpoint format shares: the error type, and readers that never unpickle.

.pth/.bin files go through `torch.load(weights_only=True)` (tensors and containers only);
a legacy bare pickle is refused before torch sees it.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

TOKENIZER_FILE = "tokenizer.model"
# Tensors some checkpoints carry that the model recomputes.
IGNORED_TENSORS = re.compile(r"(^rope\.freqs$|rotary_emb\.inv_freq$)")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and the problem."""


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
