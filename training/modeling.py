"""The model `fit` trains: a loaded base or a fresh one, with LoRA/QLoRA adapters (peft).

LoRA comes from Hugging Face peft: the engine's modules carry `LlamaForCausalLM`'s names
(`self_attn.q_proj`, `mlp.gate_proj`, ...), so peft targets them by name and saves
adapters whose keys HF transformers and vLLM load (`base_model.model.model.layers.0.
self_attn.q_proj.lora_A.weight`). QLoRA is the same adapters over a bitsandbytes nf4 base
(engine.quantize), which needs CUDA.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from engine.checkpoints import load_model
from engine.model import MODEL_CONFIGS, ModelArgs, Transformer
from engine.tokenizer import Tokenizer
from training.config import FitConfig
from training.dataclass_io import ConfigError

PEFT_ADAPTER_NAME = "default"


def from_scratch_args(config: FitConfig, tok: Tokenizer) -> ModelArgs:
    """ModelArgs from model.preset and model.args, vocab_size defaulting to the tokenizer's."""
    m = config.model
    if m.preset and m.preset not in MODEL_CONFIGS:
        raise ConfigError(f"model.preset: unknown {m.preset!r}: expected one of {', '.join(MODEL_CONFIGS)}")
    values = MODEL_CONFIGS[m.preset].to_dict() if m.preset else {}
    values.update(m.args)
    if "vocab_size" not in m.args:
        values["vocab_size"] = tok.vocab_size
    values["max_seq_len"] = m.args.get("max_seq_len", config.data.seq_len)
    if m.rope_theta is not None:
        values["rope_theta"] = m.rope_theta
    if m.args and m.preset is None and "hidden_dim" not in m.args and "multiple_of" not in m.args:
        values.setdefault("multiple_of", 64)  # small models: don't round the FFN up to 256
    try:
        args = ModelArgs.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.args: {e}") from e
    if tok.vocab_size > args.vocab_size:
        raise ConfigError(f"model.args: vocab_size {args.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    return args


def init_weights(model: Transformer, std: float) -> None:
    """GPT-2 style init: N(0, std), residual output projections N(0, std / sqrt(2 n_layers))."""
    residual_std = std / math.sqrt(2 * model.args.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue  # RMSNorm weights stay 1
            param.normal_(0.0, residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)


def build_model(config: FitConfig, device: torch.device) -> tuple[nn.Module, Transformer, Tokenizer, str]:
    """(module to train, the Transformer inside it, tokenizer, tokenizer path).

    The trained module is the Transformer itself for full fine-tuning, or peft's wrapper
    around it for LoRA/QLoRA; the Transformer (with the adapters injected) is what the
    engine runs for FIM exact-match.
    """
    m, t = config.model, config.train
    torch.manual_seed(t.seed)
    if m.base is None:
        tok = Tokenizer(m.tokenizer)
        tok.require_infilling()
        core = Transformer(from_scratch_args(config, tok))
        init_weights(core, m.init_std)
        tokenizer_path = str(Path(m.tokenizer).resolve())
        core = core.to(device=device, dtype=torch.bfloat16 if t.param_dtype == "bfloat16" else torch.float32)
    else:
        if t.method == "qlora":
            if device.type != "cuda":
                raise ConfigError("train.method: qlora needs a CUDA GPU (bitsandbytes nf4); use lora on CPU")
            core, tok, info = load_model(m.base, device=str(device), dtype="bfloat16", quantize="nf4")
        else:
            # LoRA: a frozen bf16 base on GPU; full fine-tuning: weights in train.param_dtype.
            frozen_bf16 = t.method == "lora" and device.type == "cuda"
            dtype = "bfloat16" if frozen_bf16 or t.param_dtype == "bfloat16" else "float32"
            core, tok, info = load_model(m.base, device=str(device), dtype=dtype)
        tok.require_infilling()
        tokenizer_path = str(info.tokenizer_path.resolve())
        if m.rope_theta is not None or config.data.seq_len > core.args.max_seq_len:
            theta = m.rope_theta if m.rope_theta is not None else core.args.rope_theta
            core.args = replace(
                core.args, rope_theta=theta, max_seq_len=max(core.args.max_seq_len, config.data.seq_len)
            )
            core.reset_rope(core.args.max_seq_len, device)
        if t.method == "full":
            core.requires_grad_(True)
    core.gradient_checkpointing = t.gradient_checkpointing
    core.train()
    if t.method == "full":
        return core, core, tok, tokenizer_path
    return add_lora(core, config), core, tok, tokenizer_path


def peft_config(config: FitConfig, base_path: str | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.targets),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_path,
    )


def add_lora(core: Transformer, config: FitConfig) -> nn.Module:
    """Wrap the Transformer with peft LoRA adapters; only the adapters train."""
    from peft import PeftModel

    names = {name.rsplit(".", 1)[-1] for name, module in core.named_modules()}
    missing = [target for target in config.lora.targets if target not in names]
    if missing:
        raise ConfigError(f"lora.targets: no module named {', '.join(missing)} in the model")
    # PeftModel (not get_peft_model): task_type CAUSAL_LM is recorded in the saved adapter
    # config for HF loaders, but the wrapper stays the plain one that forwards our call.
    model = PeftModel(core, peft_config(config, config.model.base), adapter_name=PEFT_ADAPTER_NAME)
    model.train()
    return model
