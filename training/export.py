"""`codellama-train export`: a training checkpoint -> a model the engine and server load.

- merged (default): the base with the LoRA adapters merged in (or the fully fine-tuned /
  from-scratch weights), written by engine.checkpoints.save_checkpoint as a codellama-lsp
  checkpoint folder: `codellama-lsp --model OUT`. Optionally bf16 or int8/int4.
- hf / gguf: the same merged model for a shared inference server (engine/export.py):
  Hugging Face's layout for vLLM (`vllm serve OUT`), or one GGUF file for llama.cpp's
  `llama-server` (f32/bf16/f16, or Q8_0 with --quantize int8).
- peft: the LoRA adapters alone in PEFT's format (adapter_config.json +
  adapter_model.safetensors, keys `base_model.model.model.layers.N....lora_A.weight`),
  which HF transformers / peft / vLLM apply to the Hugging Face base model.

QLoRA adapters are merged into the full-precision base (the nf4 base was a training-time
memory saver).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from engine.checkpoints import CheckpointError, load_model
from engine.export import export_model
from engine.model import ModelArgs, Transformer
from engine.quantize import TORCH_QUANTIZATIONS
from training import checkpointing as ckpt
from training.config import FitConfig
from training.dataclass_io import ConfigError, from_dict
from training.modeling import add_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = {"merged": "native", "hf": "hf", "gguf": "gguf", "peft": "peft"}
"""--format -> engine.export's format name (peft is written here)."""


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message names the file."""


def find_checkpoint(run: Path, checkpoint: Path | None) -> Path:
    if checkpoint is not None:
        if not (checkpoint / ckpt.TRAINER_STATE).is_file():
            raise ExportError(f"{checkpoint}: not a training checkpoint (no {ckpt.TRAINER_STATE})")
        return checkpoint
    try:  # the newest checkpoint that verifies: never export a damaged one
        latest = ckpt.resumable_checkpoint(run, lambda message: print(message, file=sys.stderr))
    except ckpt.ResumeError as e:
        raise ExportError(str(e)) from e
    if latest is None:
        raise ExportError(f"{run}: no checkpoints/step-NNNNNNNN folder: has `fit` saved one yet?")
    return latest


def rebuild_trained_model(checkpoint: Path) -> tuple[torch.nn.Module, Transformer, FitConfig, str]:
    """(trained module: Transformer or peft wrapper, the Transformer, config, tokenizer path) on CPU in fp32."""
    state = ckpt.read_trainer_state(checkpoint)
    config = from_dict(FitConfig, state["config"])
    args = ModelArgs.from_dict(state["model_args"])
    tokenizer_path = state["tokenizer"]
    if not Path(tokenizer_path).is_file():
        raise ExportError(f"{checkpoint / ckpt.TRAINER_STATE}: the run's tokenizer {tokenizer_path} is gone")
    if config.model.base is None:
        core = Transformer(args)  # every weight comes from the checkpoint
    else:
        core, _, _ = load_model(config.model.base, device="cpu", dtype="float32")
        core.args = args  # the trained shape: e.g. the long-context stage's rope_theta
        core.reset_rope(args.max_seq_len, "cpu")
    core.requires_grad_(config.train.method == "full")
    model = core if config.train.method == "full" else add_lora(core, config)
    tied = ("lm_head.weight",) if args.tie_embeddings else ()
    ckpt.load_trainable(checkpoint, model, tied)
    return model.eval(), core.eval(), config, tokenizer_path


def export_merged(
    checkpoint: Path, out: Path, dtype: torch.dtype | None = None, quantize: str = "none", fmt: str = "native"
) -> Path:
    model, core, config, tokenizer_path = rebuild_trained_model(checkpoint)
    if config.train.method != "full":
        core = model.merge_and_unload()
    core.requires_grad_(False)
    extra = {"training": {"checkpoint": str(checkpoint.resolve()), "method": config.train.method}}
    return export_model(core, tokenizer_path, out, fmt, dtype, quantize, extra if fmt == "native" else None)


def export_peft_adapter(checkpoint: Path, out: Path) -> Path:
    model, _, config, _ = rebuild_trained_model(checkpoint)
    if config.train.method == "full":
        raise ExportError(f"{checkpoint}: a {config.train.method} run has no adapter; export it merged")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # save_embedding_layers=False: peft would otherwise look the base up on the Hub.
        model.save_pretrained(str(staging), save_embedding_layers=False)
        (staging / "README.md").unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="merge LoRA into the base (or save a PEFT adapter) and write a checkpoint the server loads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", dest="run_dir", type=Path, help="run folder of `fit` (its newest checkpoint is exported)")
    p.add_argument("--checkpoint", type=Path, help="a specific RUN/checkpoints/step-NNNNNNNN folder")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default="merged",
        help="merged (codellama-lsp), hf (transformers / vLLM), gguf (llama.cpp), or peft (the adapter alone)",
    )
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the saved weights")
    p.add_argument(
        "--quantize",
        choices=["none", *TORCH_QUANTIZATIONS],
        default="none",
        help="merged: int8/int4; gguf: int8 (Q8_0)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.run_dir is None and args.checkpoint is None:
        print("export: give --run RUN_DIR or --checkpoint STEP_DIR", file=sys.stderr)
        return 2
    try:
        checkpoint = find_checkpoint(args.run_dir, args.checkpoint)
        if args.format == "peft":
            out = export_peft_adapter(checkpoint, args.out)
        else:
            out = export_merged(checkpoint, args.out, DTYPES[args.dtype], args.quantize, FORMATS[args.format])
    except (ExportError, ckpt.ResumeError, CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    use = {"merged": f": codellama-lsp --model {out}", "hf": f": vllm serve {out}", "gguf": f": llama-server -m {out}"}
    print(f"wrote {out} from {checkpoint}" + use.get(args.format, ""))
    return 0
