"""Code Llama infilling engine: model, tokenizer, prompts, checkpoints, quantization,
generation and KV-cache reuse across keystrokes.

The names below load on first use (PEP 562), so `import engine.window` does not pay for
importing torch: the server answers `initialize` before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "engine.checkpoints",
    "load_model": "engine.checkpoints",
    "save_checkpoint": "engine.checkpoints",
    "GenerationStats": "engine.generate",
    "SamplingParams": "engine.generate",
    "MODEL_CONFIGS": "engine.model",
    "KVCache": "engine.model",
    "ModelArgs": "engine.model",
    "Transformer": "engine.model",
    "InfillPrompt": "engine.prompts",
    "build_infill_prompt": "engine.prompts",
    "infilling_prompt_tokens": "engine.prompts",
    "QUANTIZATIONS": "engine.quantize",
    "QuantizationError": "engine.quantize",
    "Completion": "engine.session",
    "InfillEngine": "engine.session",
    "PromptTooLong": "engine.session",
    "Tokenizer": "engine.tokenizer",
    "TokenizerError": "engine.tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
