"""`codellama-train fit`: the training recipe (infilling stage, long-context stage, from scratch).

One explicit loop, nanoGPT / torchtune style: build the model (base checkpoint or fresh
weights; full, LoRA or QLoRA), pack FIM data, then for each optimizer step accumulate
micro-batches, clip, step AdamW (betas 0.9/0.95) on a cosine schedule with warm-up and a
final LR of peak/30, log, evaluate and checkpoint at intervals. Resuming restores weights,
optimizer, scheduler, data position and RNG, so a killed run continues bit for bit.

Run on one process (CPU or one GPU) or under `torchrun --nproc_per_node N` (FSDP).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from engine.checkpoints import CheckpointError
from engine.tokenizer import TokenizerError
from training import checkpointing as ckpt
from training.config import FitConfig, load_config
from training.data import DataPosition, TrainBatches, num_rows, pack_epoch, rows_tensor, split_documents
from training.dataclass_io import ConfigError, add_field_flags, apply_flags, read_config_file
from training.distributed import all_reduce_mean, cleanup, init_distributed, set_gradient_sync, shard_model
from training.heldout import causal_lm_loss, fim_exact_match, heldout_loss, line_infill_tasks
from training.metrics import CsvLog, plot_loss
from training.modeling import build_model
from training.shards import CorpusError, read_manifest, read_texts


class TrainingError(RuntimeError):
    """Training cannot go on; the message says what to change."""


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR after `step` optimizer steps: linear warm-up, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (weights, embeddings, adapters), not norm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error))
    )


def out_of_memory_advice(config: FitConfig, device: torch.device) -> str:
    t = config.train
    advice = [
        f"lower train.micro_batch_size (now {t.micro_batch_size}; raise train.grad_accum to keep the batch)",
        f"lower data.seq_len (now {config.data.seq_len})",
    ]
    if not t.gradient_checkpointing:
        advice.append("set train.gradient_checkpointing true")
    if t.method == "full":
        advice.append("use train.method lora" + (" or qlora" if device.type == "cuda" else ""))
    elif t.method == "lora" and device.type == "cuda":
        advice.append("use train.method qlora (nf4 base)")
    return f"out of memory on {device}: " + "; or ".join(advice)


def check_resume_matches(saved: dict, config: FitConfig, checkpoint: Path) -> list[str]:
    """Refuse to continue a different run; return notes on harmless differences."""
    now = config.to_dict()
    for section in ("model", "data", "lora"):
        for key, value in now[section].items():
            if section == "data" and key == "dir":
                continue  # a moved corpus is fine: its fingerprint is checked instead
            if saved.get(section, {}).get(key) != value and not (section == "lora" and config.train.method == "full"):
                raise ckpt.ResumeError(
                    f"{checkpoint}: this run was started with {section}.{key} = {saved.get(section, {}).get(key)!r}, "
                    f"not {value!r}: use another output.dir, or --output.resume false to start over"
                )
    if saved["train"]["method"] != config.train.method:
        raise ckpt.ResumeError(f"{checkpoint}: this run trains {saved['train']['method']}, not {config.train.method}")
    return [
        f"train.{key} changed from {saved['train'].get(key)!r} to {value!r}: the run continues, but not exactly"
        for key, value in now["train"].items()
        if saved["train"].get(key) != value and key not in ("num_threads", "device")
    ]


def missing_dependencies() -> list[str]:
    """What this run will need that is not installed, each with how to get it. (QLoRA's
    bitsandbytes and GPU are checked where the model is built, also before step 1.)"""
    wanted = {"matplotlib": "it draws RUN/loss.png at every checkpoint"}
    return [
        f"{name} is not installed ({why}): pip install -e '.[train]'"
        for name, why in wanted.items()
        if importlib.util.find_spec(name) is None
    ]


class FitRecipe:
    """One training run, as torchtune writes recipes: `setup` (data, model, optimizer, the
    checkpoint to resume), then `run`'s visible loop of `train_step`, `evaluate` and `save`.

    `on_step(step, metrics)` is called after every optimizer step (tests use it).
    """

    def __init__(self, config: FitConfig, on_step: Callable[[int, dict], None] | None = None) -> None:
        self.config, self.on_step = config, on_step
        self.run_dir = Path(config.output.dir)
        self.step, self.tokens_seen = 0, 0
        self.log: CsvLog | None = None

    # ---- setup ----

    def setup(self) -> None:
        t = self.config.train
        self.topo, self.device = init_distributed(t.device)
        self.threads = t.num_threads or max(1, (os.cpu_count() or 1) // self.topo.local_world_size)
        torch.set_num_threads(self.threads)
        self.say = tqdm.write if self.topo.main else (lambda *_: None)
        missing = missing_dependencies() if self.topo.main else []
        if missing:  # found now, not after an hour of training at the first checkpoint
            raise TrainingError("; ".join(missing))
        self.setup_data()
        resumed = self.setup_model()
        self.setup_optimizer(resumed)
        self.setup_evaluation()
        self.setup_log(resumed is not None)

    def setup_data(self) -> None:
        """The corpus text (tokenized and FIM-transformed per epoch by TrainBatches)."""
        d = self.config.data
        self.manifest = read_manifest(d.dir)
        self.texts = split_documents(read_texts(d.dir, "train"), d.max_document_chars)
        self.valid_texts = read_texts(d.dir, "valid")
        if not self.texts:
            raise CorpusError(f"{d.dir}: the corpus has no training documents")

    def setup_model(self) -> Path | None:
        """The model (base checkpoint or fresh), its trained tensors from the checkpoint to resume, FSDP."""
        config, t = self.config, self.config.train
        self.model, self.core, self.tok, self.tokenizer_path = build_model(config, self.device)
        self.tied_keys = ("lm_head.weight",) if self.core.args.tie_embeddings else ()
        resume_from = ckpt.resumable_checkpoint(self.run_dir, self.say) if config.output.resume else None
        self.resume_state: dict = {}
        if resume_from is not None:
            self.resume_state = ckpt.read_trainer_state(resume_from)
            for note in check_resume_matches(self.resume_state["config"], config, resume_from):
                self.say(f"note: {note}")
            if self.resume_state.get("corpus_fingerprint") != self.manifest.get("fingerprint"):
                raise ckpt.ResumeError(f"{resume_from}: the corpus in {config.data.dir} changed since this run started")
            ckpt.load_trainable(resume_from, self.model, self.tied_keys)
        if self.topo.distributed:
            if t.method == "qlora":
                raise ConfigError("train.method: qlora runs on one GPU; use lora (or full) with torchrun/FSDP")
            shard_model(self.core, self.device, self.topo.world_size)
        self.forward_model = torch.compile(self.model) if t.compile else self.model
        return resume_from

    def setup_optimizer(self, resume_from: Path | None) -> None:
        """AdamW on a warm-up + cosine schedule; on resume its state, the schedule, the data position, the RNG."""
        t, d = self.config.train, self.config.data
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay),
            lr=t.lr,
            betas=t.betas,
            eps=t.eps,
            # FSDP's sharded params: foreach.
            fused=(self.device.type == "cuda" and not self.topo.distributed) or None,
        )
        self.warmup = self.config.warmup()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=self.warmup, max_steps=t.max_steps, min_ratio=t.min_lr_ratio)
        )
        position = DataPosition()
        if resume_from is not None:
            state = self.resume_state
            ckpt.load_optimizer(resume_from, self.model, self.optimizer)
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.load_rng(resume_from, self.topo.rank)
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            position = DataPosition(**state["data_position"])
            self.say(f"resumed {resume_from} at step {self.step} (epoch {position.epoch}, row {position.row})")
            if state["world_size"] != self.topo.world_size:
                self.say(
                    f"note: saved with {state['world_size']} processes, resumed with {self.topo.world_size}: "
                    "not bit-exact"
                )
        self.batches = TrainBatches(
            self.tok, self.texts, d.seq_len, d.seed, d.fim_rate, d.spm_rate, t.micro_batch_size, self.topo.rank,
            self.topo.world_size, position=position, log=self.say,
        )  # fmt: skip

    def setup_evaluation(self) -> None:
        """Held-out data: the first rows of the packed valid split, and line-infilling tasks."""
        config, t, d = self.config, self.config.train, self.config.data
        self.eval_batches: list[torch.Tensor] = []
        if self.valid_texts and config.eval.batches:
            pieces = split_documents(self.valid_texts, d.max_document_chars)
            stream, _ = pack_epoch(self.tok, pieces, d.seq_len, d.seed, 0, d.fim_rate, d.spm_rate, shuffle=False)
            # The same number of batches on every rank: under FSDP each forward is a collective.
            world = self.topo.world_size
            rounds = min(config.eval.batches, num_rows(stream, d.seq_len) // (world * t.micro_batch_size))
            for b in range(rounds):
                first = (b * world + self.topo.rank) * t.micro_batch_size
                self.eval_batches.append(rows_tensor(stream, d.seq_len, first, t.micro_batch_size).to(self.device))
        self.tasks = line_infill_tasks(
            self.valid_texts, config.eval.fim_examples, config.eval.fim_context_chars, d.seed
        )
        if not self.valid_texts:
            self.say("note: the corpus has no held-out documents: no held-out loss or FIM exact-match")
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = (
            partial(torch.autocast, self.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext
        )
        self.tokens_per_step = t.micro_batch_size * d.seq_len * t.grad_accum * self.topo.world_size

    def setup_log(self, resumed: bool) -> None:
        t = self.config.train
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.say(
            f"{t.method} training of {sum(p.numel() for p in self.core.parameters()) / 1e6:.1f}M parameters "
            f"({trainable / 1e6:.2f}M trainable) on {self.device} x{self.topo.world_size}, {self.threads} threads; "
            f"{self.tokens_per_step:,} tokens/step, warm-up {self.warmup} of {t.max_steps} steps"
        )
        if self.topo.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_text = json.dumps(self.config.to_dict(), indent=2)
            (self.run_dir / "config.json").write_text(config_text + "\n", encoding="utf-8")
            self.log = CsvLog(self.run_dir / "log.csv", resume_step=self.step if resumed else None)

    # ---- the three things a step does ----

    def train_step(self) -> dict:
        """One optimizer step: accumulate micro-batches, clip, step AdamW and the schedule."""
        t = self.config.train
        step_start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        try:
            for micro in range(t.grad_accum):
                rows = self.batches.next().to(self.device, non_blocking=True)  # (B, seq_len + 1)
                if self.topo.distributed:
                    set_gradient_sync(self.core, micro == t.grad_accum - 1)
                with self.autocast():
                    loss = causal_lm_loss(self.forward_model, rows) / t.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            params = [p for p in self.model.parameters() if p.requires_grad]
            max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
        except Exception as e:
            if is_out_of_memory(e):
                raise TrainingError(out_of_memory_advice(self.config, self.device)) from e
            raise
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        loss_value = float(all_reduce_mean(loss_sum))  # one host sync per optimizer step
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the loss became {loss_value} at step {self.step}: lower train.lr (now {t.lr}) or check the data; "
                f"the last good checkpoint is in {self.run_dir / ckpt.CHECKPOINTS}"
            )
        return {
            "step": self.step,
            "epoch": self.batches.position.epoch,
            "tokens": self.tokens_seen,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": self.tokens_per_step / (time.perf_counter() - step_start),
        }

    def evaluate(self) -> dict:
        """Held-out loss, and FIM exact match of what the editor would show (engine.pipeline)."""
        out = {}
        if self.eval_batches:
            out["val_loss"] = heldout_loss(self.forward_model, self.eval_batches, self.autocast)
        if self.tasks:
            e, d = self.config.eval, self.config.data
            out["fim_exact_match"] = fim_exact_match(
                self.core, self.tok, self.tasks, e.fim_max_new_tokens, max(d.seq_len, 256)
            )
        return out

    def save(self, metrics: dict) -> None:
        """A checkpoint of everything resuming needs (written atomically, with checksums), and the loss curve."""
        trainer_state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "data_position": {"epoch": self.batches.position.epoch, "row": self.batches.position.row},
            "scheduler": self.scheduler.state_dict(),
            "world_size": self.topo.world_size,
            "corpus_fingerprint": self.manifest.get("fingerprint"),
            "tokenizer": self.tokenizer_path,
            "model_args": self.core.args.to_dict(),
            "metrics": metrics,
            "config": self.config.to_dict(),
        }
        ckpt.save_training_checkpoint(
            self.run_dir, self.step, self.model, self.optimizer, trainer_state, self.topo.rank,
            self.config.output.keep, self.tied_keys,
        )  # fmt: skip
        if self.topo.main:
            title = f"{self.run_dir.name}: {self.config.train.method}"
            plot_loss(self.run_dir / "log.csv", self.run_dir / "loss.png", title=title)

    # ---- the loop ----

    def run(self) -> dict:
        """Train to config.train.max_steps; return the last logged metrics."""
        self.setup()
        config, t = self.config, self.config.train
        progress = tqdm(
            total=t.max_steps, initial=self.step, disable=not (self.topo.main and config.output.progress),
            unit="step", dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
        metrics: dict = {}
        recent_losses: list[float] = []
        started = time.perf_counter()
        self.model.train()
        try:
            while self.step < t.max_steps:
                metrics = self.train_step() | {"elapsed_s": time.perf_counter() - started}
                progress.update(1)
                progress.set_postfix(
                    loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:,.0f}", lr=f"{metrics['lr']:.2e}"
                )
                step = self.step
                evaluating = step == t.max_steps or (config.eval.every and step % config.eval.every == 0)
                if evaluating:
                    metrics.update(self.evaluate())
                    self.say(
                        f"step {step}: loss {metrics['loss']:.4f}, held-out loss "
                        f"{metrics.get('val_loss', float('nan')):.4f}, "
                        f"FIM exact-match {metrics.get('fim_exact_match', float('nan')):.1%}"
                    )
                recent_losses.append(metrics["loss"])
                if evaluating or step % config.output.log_every == 0:
                    # The CSV row's loss is the mean since the previous row: a readable curve at any log_every.
                    if self.log is not None:
                        self.log.write({**metrics, "loss": sum(recent_losses) / len(recent_losses)})
                    recent_losses.clear()
                if step % config.output.save_every == 0 or step == t.max_steps:
                    self.save(metrics)
                if self.on_step is not None:
                    self.on_step(step, metrics)
        finally:
            progress.close()
        if self.topo.main:
            where = self.run_dir / ckpt.CHECKPOINTS
            self.say(f"done: {self.step} steps, {self.tokens_seen:,} tokens; checkpoints in {where}")
        return metrics


def train(config: FitConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume) training to config.train.max_steps; return the last logged metrics."""
    return FitRecipe(config, on_step).run()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train: infilling stage, long-context stage, or a small model from scratch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="a .toml (or .json) config, e.g. training/configs/infilling.toml")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    add_field_flags(p, FitConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        values = read_config_file(args.config) if args.config is not None else {}
        apply_flags(values, args, FitConfig)
        config = load_config(None, values)
    except ConfigError as e:
        where = f"{args.config}: " if args.config is not None else ""
        print(f"fit: {where}{e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    try:
        train(config)
    except (ConfigError, CorpusError, CheckpointError, TokenizerError, ckpt.ResumeError, TrainingError) as e:
        print(f"fit: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fit: interrupted; resume from the last checkpoint in {config.output.dir}", file=sys.stderr)
        return 130
    finally:
        cleanup()
    return 0
