"""Writes the editor tests' tiny random checkpoint: `python -m tests.editors.tiny_model OUT_DIR`.

The VS Code tests run in node (`npm test`), outside pytest's fixtures, and call this to get the
same model `tiny_checkpoint` gives pytest. Run from the repository root. An existing OUT_DIR is
reused; a new one appears atomically, so concurrent test processes never see half a checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.fixtures import train_tiny_tokenizer, write_tiny_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.out / "model_args.json").exists():
        print(args.out)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as scratch:
        tokenizer = train_tiny_tokenizer(Path(scratch) / "tokenizer")
        checkpoint = write_tiny_checkpoint(Path(scratch) / "model", tokenizer, seed=args.seed)
        try:
            checkpoint.rename(args.out)
        except OSError:  # another process got there first
            if not (args.out / "model_args.json").exists():
                raise
            shutil.rmtree(checkpoint, ignore_errors=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
