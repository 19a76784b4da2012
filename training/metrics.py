"""The run's log: log.csv (one row per logged step) and loss.png (the loss curve).

A row's `loss` is the mean training loss of the steps since the previous row; `val_loss`
and `fim_exact_match` are filled on evaluation steps.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

COLUMNS = (
    "step",
    "epoch",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
    "val_loss",
    "fim_exact_match",
)


class CsvLog:
    """Appends rows to RUN/log.csv; on resume, drops rows past the checkpoint's step first."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        rows = read_log(self.path) if resume_step is not None and self.path.is_file() else []
        rows = [r for r in rows if int(r["step"]) <= (resume_step or 0)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: _format(row.get(k)) for k in COLUMNS})


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: resumed runs are compared bit for bit
    return str(value)


def read_log(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_loss(csv_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Train loss (and held-out loss where measured) against step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(csv_path)
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="held-out loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    finite = [loss for _, loss in train + val if math.isfinite(loss)]
    if finite and max(finite) / max(min(finite), 1e-9) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
