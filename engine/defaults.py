"""Where the small default model lives: inside the installed package."""

from __future__ import annotations

from pathlib import Path

from engine.checkpoints import NATIVE_CONFIG, CheckpointError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def default_model_path() -> Path:
    if not (DEFAULT_MODEL_DIR / NATIVE_CONFIG).is_file():
        raise CheckpointError(
            f"{DEFAULT_MODEL_DIR}: this install ships no default model; pass --model with a Code Llama "
            "checkpoint folder (Hugging Face, Meta or codellama-lsp format)"
        )
    return DEFAULT_MODEL_DIR
