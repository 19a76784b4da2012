"""Held-out measurements during `fit`: loss on held-out rows, and FIM exact-match.

FIM exact-match cuts one non-blank line out of each held-out document (the part after its
indentation), asks the engine's InfillEngine to fill it greedily from the prefix and
suffix around it, in PSM and in SPM (with the token healing the server uses), and counts
completions equal to the line. It measures what the user sees: single-line ghost text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.generate import SamplingParams
from engine.model import Transformer
from engine.prompts import INFILL_FORMATS
from engine.session import InfillEngine, PromptTooLong
from engine.tokenizer import Tokenizer


@dataclass(frozen=True)
class InfillTask:
    prefix: str
    middle: str
    suffix: str


def line_infill_tasks(texts: list[str], count: int, context_chars: int, seed: int = 0) -> list[InfillTask]:
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
        tasks.append(InfillTask(prefix[-context_chars:], lines[i][len(indent) :], suffix[:context_chars]))
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
    core: Transformer, tok: Tokenizer, tasks: list[InfillTask], max_new_tokens: int, max_seq_len: int
) -> float:
    """Share of (task, format) pairs whose greedy single-line completion equals the middle.

    Under FSDP every rank runs the same greedy generations in lockstep (each forward
    gathers the sharded weights), so all ranks return the same number.
    """
    if not tasks:
        return float("nan")
    was_training = core.training
    engine = InfillEngine(core, tok, max_seq_len=max_seq_len, cache_slots=1)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=("\n",))
    hits = total = 0
    try:
        for task in tasks:
            for fmt in INFILL_FORMATS:
                try:
                    completion = engine.complete(task.prefix, task.suffix, fmt=fmt, params=params)
                except PromptTooLong:
                    continue
                total += 1
                hits += completion.text.rstrip() == task.middle.rstrip()
    finally:
        core.train(was_training)
    return hits / total if total else float("nan")
