"""Held-out measurements during `fit`: loss on held-out rows, and FIM exact-match.

FIM exact-match cuts one non-blank line out of each held-out document (the part after its
indentation: the cursor where an editor leaves it after auto-indenting), completes it
through the server's pipeline (engine.pipeline: its prompt, greedy generation, its
post-processing) in PSM and in SPM, and counts completions equal to the line by the
repository benchmark's rule. It measures what the user sees: single-line ghost text.
"""

from __future__ import annotations

import random

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.model import Transformer
from engine.options import INFILL_FORMATS, CompletionSettings, PromptSettings
from engine.pipeline import Pipeline, Snapshot
from engine.session import InfillEngine, PromptTooLong
from engine.tokenizer import Tokenizer
from training.evaluation.repo_lines import LineTask, line_matches


def line_infill_tasks(texts: list[str], count: int, context_chars: int, seed: int = 0) -> list[LineTask]:
    """Up to `count` single-line tasks, one per document, chosen reproducibly."""
    rng = random.Random(f"fim-eval/{seed}")
    tasks = []
    for text in texts:
        if len(tasks) >= count:
            break
        lines = text.split("\n")
        candidates = [i for i, line in enumerate(lines) if line.strip()]
        if not candidates:
            continue
        i = rng.choice(candidates)
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        prefix = "".join(line + "\n" for line in lines[:i]) + indent
        suffix = "".join("\n" + line for line in lines[i + 1 :])
        tasks.append(
            LineTask(f"{len(tasks)}:{i + 1}", prefix[-context_chars:], suffix[:context_chars], lines[i][len(indent) :])
        )
    return tasks


def causal_lm_loss(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of rows (B, T + 1): inputs rows[:, :-1], targets rows[:, 1:]."""
    logits = model(rows[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten())


@torch.no_grad()
def heldout_loss(model: nn.Module, batches: list[torch.Tensor], autocast) -> float:
    """Mean loss over this rank's batches, averaged over ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for rows in batches:
        with autocast():
            total += torch.tensor([float(causal_lm_loss(model, rows)), 1.0], dtype=torch.float64)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def fim_exact_match(
    core: Transformer, tok: Tokenizer, tasks: list[LineTask], max_new_tokens: int, max_seq_len: int
) -> float:
    """Share of (task, format) pairs whose greedy single-line completion, as the editor would
    show it, is the line.

    Under FSDP every rank runs the same greedy generations in lockstep (each forward
    gathers the sharded weights), so all ranks return the same number.
    """
    if not tasks:
        return float("nan")
    was_training = core.training
    pipeline = Pipeline(InfillEngine(core, tok, max_seq_len=max_seq_len, cache_slots=1))
    hits = total = 0
    try:
        for task in tasks:
            for fmt in INFILL_FORMATS:
                settings = CompletionSettings(
                    max_tokens=max_new_tokens,
                    multiline="never",
                    time_budget_ms=120_000,
                    prompt=PromptSettings(format=fmt),
                )
                try:
                    done = pipeline.complete(Snapshot(task.text, len(task.prefix)), settings)
                except PromptTooLong:
                    continue
                total += 1
                hits += line_matches(done.edit.text if done.edit is not None else "", task)
    finally:
        core.train(was_training)
    return hits / total if total else float("nan")
