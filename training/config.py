"""The `fit` configuration: a typed dataclass tree, one line of doc per field.

Shipped configs live in training/configs/ (infilling stage, long-context stage, a small
model from scratch). Any field can be overridden on the command line as
`--section.field VALUE`, e.g. `--model.base ./CodeLlama-7b-hf --train.lr 1e-4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.dataclass_io import ConfigError, from_dict, read_config_file, to_dict

CONFIG_DIR = Path(__file__).parent / "configs"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ModelConfig:
    base: str | None = None
    """Checkpoint folder to start from (Hugging Face, Meta or codellama-lsp format); unset: train from scratch."""
    tokenizer: str | None = None
    """SentencePiece tokenizer.model for a model trained from scratch (a base checkpoint brings its own)."""
    preset: str | None = None
    """From scratch: a shape from engine.model.MODEL_CONFIGS ("7B", ...) that `args` then overrides."""
    args: dict = field(default_factory=dict)
    """From scratch: ModelArgs fields (dim, n_layers, n_heads, ...); vocab_size defaults to the tokenizer's."""
    rope_theta: float | None = None
    """Set RoPE theta (the long-context stage uses 1e6); unset keeps the base model's."""
    init_std: float = 0.02
    """From scratch: std of the normal initialisation (output projections are scaled by 1/sqrt(2 n_layers))."""


@dataclass
class DataConfig:
    dir: str = ""
    """Corpus folder written by `codellama-train prepare` (train and valid shards)."""
    seq_len: int = 4096
    """Tokens per training sequence (documents are packed; the long-context stage uses 16,384)."""
    fim_rate: float = 0.9
    """Share of documents turned into fill-in-the-middle examples (paper: 0.9)."""
    spm_rate: float = 0.5
    """Share of FIM examples in SPM (suffix-first) rather than PSM layout (paper: 0.5)."""
    seed: int = 0
    """Seed of the per-document FIM draws and the per-epoch document order."""
    max_document_chars: int = 0
    """Cut longer documents into pieces at line boundaries (0: keep whole); FIM needs documents shorter than a row."""


@dataclass
class TrainConfig:
    method: Literal["full", "lora", "qlora"] = "lora"
    """full fine-tuning, LoRA, or QLoRA (LoRA over a bitsandbytes nf4 base; CUDA only)."""
    max_steps: int = 1000
    """Optimizer steps; the cosine schedule spans exactly this many."""
    micro_batch_size: int = 1
    """Sequences per forward pass on each device (lower it on out-of-memory)."""
    grad_accum: int = 16
    """Micro-batches accumulated per optimizer step (raise it to keep the batch when lowering the micro-batch)."""
    lr: float = 3e-4
    """Peak learning rate (paper: 3e-4 code stage, 2e-5 long-context stage)."""
    min_lr_ratio: float = 1 / 30
    """Final learning rate as a fraction of the peak (paper: 1/30)."""
    warmup_steps: int = 1000
    """Linear warm-up steps (paper: 1000) ..."""
    warmup_max_fraction: float = 0.05
    """... but at most this fraction of max_steps, so short runs are not all warm-up."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (paper: 0.9, 0.95)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less memory, about a third more compute."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU (this CPU has no fast bf16 matmul)."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the trained weights for full fine-tuning (bfloat16 halves their memory). LoRA bases are bf16 on GPU."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu or cuda; under torchrun each rank takes cuda:LOCAL_RANK."""
    num_threads: int = 0
    """CPU threads for torch (0: the machine's cores divided among the local ranks)."""
    compile: bool = False
    """torch.compile the model (faster steps after a slow first one)."""
    seed: int = 0
    """Seed of weight initialisation and LoRA dropout."""


@dataclass
class LoraConfig:
    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.05
    """Dropout on the LoRA branch input."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linear layers that get adapters (attention q/k/v/o and MLP gate/up/down)."""


@dataclass
class EvalConfig:
    every: int = 200
    """Evaluate every this many steps (and at the end); 0: only at the end."""
    batches: int = 8
    """Held-out micro-batches for the held-out loss."""
    fim_examples: int = 32
    """Held-out single-line middles to infill greedily for FIM exact-match (0 disables)."""
    fim_max_new_tokens: int = 48
    """Token limit of each exact-match completion."""
    fim_context_chars: int = 2000
    """Characters of prefix and of suffix kept around each held-out middle."""


@dataclass
class OutputConfig:
    dir: str = "runs/fit"
    """Run folder: config.json, log.csv, loss.png and checkpoints/step-NNNNNNNN/."""
    save_every: int = 200
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep: int = 2
    """Checkpoints kept (older ones are deleted once a newer one is complete)."""
    log_every: int = 10
    """Write a log.csv row every this many steps."""
    resume: bool = True
    """Continue from the newest checkpoint in the run folder if there is one."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA)."""


@dataclass
class FitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """What to train: a base checkpoint or a from-scratch shape."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus, sequence length and the FIM transform."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Method, optimizer, schedule, batch and precision."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA/QLoRA adapter shape (ignored for full fine-tuning)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out loss and FIM exact-match."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Run folder, checkpoints and logs."""

    def validate(self) -> FitConfig:
        """Raise ConfigError naming the first field whose value cannot work."""
        m, d, t = self.model, self.data, self.train
        if m.base is None:
            if m.tokenizer is None:
                raise ConfigError("model.tokenizer: required to train from scratch (or set model.base)")
            if m.preset is None and not m.args:
                raise ConfigError("model.args: give the model's shape (or a model.preset) to train from scratch")
        elif m.preset or m.args or m.tokenizer:
            raise ConfigError(
                "model.base: a base checkpoint brings its own shape and tokenizer; unset model.preset/args/tokenizer"
            )
        if t.method != "full" and m.base is None:
            raise ConfigError(f"train.method: {t.method} adapts a base model; set model.base or use full")
        checks = [
            ("data.dir", bool(d.dir), "required: the corpus folder from `codellama-train prepare`"),
            ("data.seq_len", d.seq_len >= 16, f"must be at least 16, got {d.seq_len}"),
            ("data.fim_rate", 0 <= d.fim_rate <= 1, f"must be in [0, 1], got {d.fim_rate}"),
            ("data.spm_rate", 0 <= d.spm_rate <= 1, f"must be in [0, 1], got {d.spm_rate}"),
            ("data.max_document_chars", d.max_document_chars >= 0, f"must not be negative, got {d.max_document_chars}"),
            ("train.max_steps", t.max_steps >= 1, f"must be positive, got {t.max_steps}"),
            ("train.micro_batch_size", t.micro_batch_size >= 1, f"must be positive, got {t.micro_batch_size}"),
            ("train.grad_accum", t.grad_accum >= 1, f"must be positive, got {t.grad_accum}"),
            ("train.lr", t.lr > 0, f"must be positive, got {t.lr}"),
            ("train.min_lr_ratio", 0 <= t.min_lr_ratio <= 1, f"must be in [0, 1], got {t.min_lr_ratio}"),
            ("train.warmup_steps", t.warmup_steps >= 0, f"must not be negative, got {t.warmup_steps}"),
            ("train.betas", all(0 <= b < 1 for b in t.betas), f"must be in [0, 1), got {t.betas}"),
            ("train.num_threads", t.num_threads >= 0, f"must not be negative, got {t.num_threads}"),
            ("lora.rank", self.lora.rank >= 1, f"must be positive, got {self.lora.rank}"),
            ("lora.targets", bool(self.lora.targets), "name at least one Linear layer"),
            ("model.rope_theta", m.rope_theta is None or m.rope_theta > 0, f"must be positive, got {m.rope_theta}"),
            ("output.save_every", self.output.save_every >= 1, f"must be positive, got {self.output.save_every}"),
            ("output.keep", self.output.keep >= 1, f"must be positive, got {self.output.keep}"),
            ("output.log_every", self.output.log_every >= 1, f"must be positive, got {self.output.log_every}"),
            ("eval.every", self.eval.every >= 0, f"must not be negative, got {self.eval.every}"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"{name}: {problem}")
        return self

    def warmup(self) -> int:
        """Warm-up steps, scaled down for short runs."""
        return min(self.train.warmup_steps, max(1, round(self.train.warmup_max_fraction * self.train.max_steps)))

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path | None, overrides: dict | None = None) -> FitConfig:
    """Read a config file (or start from defaults), apply overrides, check every field."""
    values = read_config_file(path) if path is not None else {}
    for section, fields_ in (overrides or {}).items():
        values.setdefault(section, {}).update(fields_)
    try:
        return from_dict(FitConfig, values).validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.toml"))
