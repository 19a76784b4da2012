"""Code Llama infilling engine: model, tokenizer, prompts, checkpoints, quantization,
generation and KV-cache reuse across keystrokes."""

from engine.checkpoints import CheckpointError, load_model, save_checkpoint
from engine.generate import GenerationStats, SamplingParams
from engine.model import MODEL_CONFIGS, KVCache, ModelArgs, Transformer
from engine.prompts import InfillPrompt, build_infill_prompt, infilling_prompt_tokens
from engine.quantize import QUANTIZATIONS, QuantizationError
from engine.session import Completion, InfillEngine, PromptTooLong
from engine.tokenizer import Tokenizer, TokenizerError

__all__ = [
    "MODEL_CONFIGS",
    "QUANTIZATIONS",
    "CheckpointError",
    "Completion",
    "GenerationStats",
    "InfillEngine",
    "InfillPrompt",
    "KVCache",
    "ModelArgs",
    "PromptTooLong",
    "QuantizationError",
    "SamplingParams",
    "Tokenizer",
    "TokenizerError",
    "Transformer",
    "build_infill_prompt",
    "infilling_prompt_tokens",
    "load_model",
    "save_checkpoint",
]
