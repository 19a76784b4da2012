"""Every choice and bound a user can set, written once (torch-free).

The command line (`codellama-lsp`, `codellama-train`), the server's settings
(lsp/settings.py) and the editors' settings schemas take their choices, defaults and
bounds from here; tests/lsp/test_options.py holds editors/vscode/package.json to them.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

Quantization = Literal["none", "int8", "int4", "nf4", "bnb-int8"]
Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
InfillFormat = Literal["spm", "psm"]
Multiline = Literal["auto", "always", "never"]
BackendKind = Literal["openai", "llamacpp"]
CompileMode = Literal["auto", "on", "off"]

QUANTIZATIONS: tuple[str, ...] = typing.get_args(Quantization)
TORCH_QUANTIZATIONS = ("int8", "int4")
"""Quantizations torch's own kernels run (and that a checkpoint can be saved in)."""
BNB_QUANTIZATIONS = ("nf4", "bnb-int8")
"""Quantizations bitsandbytes runs, on a CUDA GPU only."""
SAVED_QUANTIZATIONS = ("none", *TORCH_QUANTIZATIONS)
EXPORT_FORMATS = ("native", "hf", "gguf")
"""native: our own checkpoint folder; hf: transformers / vLLM; gguf: llama.cpp (engine/export.py)."""
DEVICES: tuple[str, ...] = typing.get_args(Device)
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
INFILL_FORMATS: tuple[str, ...] = typing.get_args(InfillFormat)
MULTILINE_MODES: tuple[str, ...] = typing.get_args(Multiline)
BACKEND_KINDS: tuple[str, ...] = typing.get_args(BackendKind)
COMPILE_MODES: tuple[str, ...] = typing.get_args(CompileMode)
COMPILE_THREAD = "codellama-compile"
"""The thread that compiles the decode step in the background (the server's exit looks for it)."""


def bounded(default: Any, low: float, high: float) -> Any:
    """A numeric field that must lie in [low, high]."""
    return field(default=default, metadata={"range": (low, high)})


@dataclass
class PromptSettings:
    """How much of the documents goes into the prompt (token budgets; latency grows with them)."""

    prefix_tokens: int = bounded(1024, 16, 16384)
    """Tokens of the current document before the cursor, at most."""
    suffix_tokens: int = bounded(320, 0, 16384)
    """Tokens of the current document after the cursor, at most (about 1/3 of the prefix)."""
    context_files: int = bounded(3, 0, 32)
    """Other open documents to take snippets from, most recently used first; 0 turns context off."""
    context_tokens: int = bounded(512, 0, 16384)
    """Tokens for all snippets of other documents together."""
    recent_chunks: int = bounded(4, 0, 16)
    """Places the user recently edited, copied or left that lend snippets (before other documents); 0: none."""
    format: InfillFormat = "spm"
    """Infilling layout: "spm" (suffix first, best KV-cache reuse, with token healing) or "psm"."""


@dataclass
class CompletionSettings:
    """What one completion may be: the prompt, the generation, the post-processing."""

    max_tokens: int = bounded(128, 1, 2048)
    """Tokens generated per completion at most."""
    temperature: float = bounded(0.0, 0.0, 2.0)
    """Sampling temperature; 0 is greedy (deterministic)."""
    multiline: Multiline = "auto"
    """"auto": one line when text follows the cursor on its line, several after a block opener."""
    max_lines: int = bounded(16, 1, 500)
    """Lines of a multi-line completion at most."""
    time_budget_ms: int = bounded(2000, 10, 120_000)
    """Generation stops after this long (the completion so far is still shown)."""
    prompt: PromptSettings = field(default_factory=PromptSettings)
    """Prompt budgets and layout."""


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: bool = True) -> None:
    """--model, --device, --dtype, --quantize: how every command names and loads a model."""
    if model:
        parser.add_argument(
            "--model", help="checkpoint folder (Hugging Face, Meta or codellama-lsp); default: the shipped model"
        )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when available")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on GPU, fp32 on CPU when it fits")
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS, help="weight quantization at load")
    remote = parser.add_argument_group("a shared inference server instead of the model in this process")
    remote.add_argument(
        "--backend", metavar="URL", help="vLLM / SGLang / llama.cpp server, e.g. http://gpu-box:8000; --model then "
        "names the tokenizer (a checkpoint folder, weights not needed; default: the shipped model's)"
    )  # fmt: skip
    remote.add_argument(
        "--backend-kind", default="openai", choices=BACKEND_KINDS,
        help="openai: /v1/completions (vLLM, SGLang, llama.cpp); llamacpp: llama.cpp's /completion",
    )  # fmt: skip
    remote.add_argument("--backend-model", help="the served model's name (default: the first the server lists)")
    remote.add_argument("--backend-api-key-env", metavar="VAR", help="environment variable holding the API key")
