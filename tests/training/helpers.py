"""Small corpora and fit configs for the training tests (CPU, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.config import FitConfig, load_config
from training.prepare import PrepareOptions, prepare_corpus


def stdlib_sources() -> list[Path]:
    """Real Python code: the json package and a dozen asyncio modules (about 400 KB)."""
    root = Path(json.__file__).parent.parent
    return sorted((root / "json").glob("*.py")) + sorted((root / "asyncio").glob("*.py"))[:14]


def make_corpus(out_dir: Path, valid_fraction: float = 0.2, chunk_lines: int = 0) -> Path:
    """A corpus folder made by `prepare` from a plain folder of stdlib files.

    chunk_lines > 0 cuts each file into pieces of that many lines (many short documents:
    most FIM examples then fit in short training rows).
    """
    src = out_dir.parent / (out_dir.name + "-src")
    src.mkdir(parents=True, exist_ok=True)
    for path in stdlib_sources():
        name = f"{path.parent.name}_{path.stem}"
        if not chunk_lines:
            shutil.copy(path, src / f"{name}.py")
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for i in range(0, len(lines), chunk_lines):
            (src / f"{name}_{i:05d}.py").write_text("".join(lines[i : i + chunk_lines]), encoding="utf-8")
    prepare_corpus([], [str(src)], out_dir, PrepareOptions(valid_fraction=valid_fraction))
    return out_dir


def tiny_fit_config(data_dir: Path, run_dir: Path, **sections) -> FitConfig:
    """A fit config for a 2-layer model on 64-token rows; `sections` override per section."""
    values = {
        "data": {"dir": str(data_dir), "seq_len": 256},
        "train": {
            "max_steps": 8,
            "micro_batch_size": 2,
            "grad_accum": 2,
            "lr": 3e-3,
            "num_threads": 2,
            "device": "cpu",
        },
        "eval": {"every": 0, "batches": 2, "fim_examples": 2, "fim_max_new_tokens": 8, "fim_context_chars": 200},
        "output": {"dir": str(run_dir), "save_every": 4, "log_every": 1, "progress": False},
    }
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    return load_config(None, values)
