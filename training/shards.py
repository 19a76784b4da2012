"""The corpus on disk: JSON-lines text shards plus a manifest.

    DIR/manifest.json          what was kept and skipped, and the shard lists
    DIR/train-00000.jsonl      one document a line: {"text", "path", "sha256"}
    DIR/valid-00000.jsonl      held-out documents (held-out loss, FIM exact-match)

Shards hold text, not tokens: the FIM transform cuts documents at character offsets and
is drawn anew each epoch, so tokenization happens when `fit` packs an epoch (and the
`tokenizer` command trains on the same text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "manifest.json"
SPLITS = ("train", "valid")


class CorpusError(ValueError):
    """A corpus folder or shard is missing or malformed; the message names the file and line."""


class ShardWriter:
    """Appends documents to `{split}-NNNNN.jsonl`, starting a new shard past `shard_bytes`."""

    def __init__(self, out_dir: Path, split: str, shard_bytes: int = 64 * 2**20) -> None:
        self.out_dir, self.split, self.shard_bytes = out_dir, split, shard_bytes
        self.shards: list[str] = []
        self.documents = 0
        self._file = None
        self._size = 0

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._file is None or self._size >= self.shard_bytes:
            self._open_next()
        self._file.write(line)
        self._size += len(line.encode("utf-8"))
        self.documents += 1

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        # Written under a temporary name and renamed in close(): a crash leaves no half shard.
        self._file = open(self.out_dir / (name + ".tmp"), "w", encoding="utf-8")
        self.shards.append(name)
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            name = self.shards[-1]
            os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
            self._file = None


def write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{data_dir}: no {MANIFEST}; make the corpus with `codellama-train prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: cannot read: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise CorpusError(f"{path}: no 'shards' object; was it written by `codellama-train prepare`?")
    return manifest


def iter_records(data_dir: str | Path, split: str = "train") -> Iterator[dict]:
    """The documents of one split, in shard order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    data_dir = Path(data_dir)
    for name in read_manifest(data_dir)["shards"].get(split, []):
        path = data_dir / name
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CorpusError(f"{path}:{number}: not a JSON line: {e}") from e
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise CorpusError(f"{path}:{number}: expected an object with a 'text' string")
                    yield record
        except OSError as e:
            raise CorpusError(f"{path}: cannot read shard: {e}") from e
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: not UTF-8 at byte {e.start}") from e


def read_texts(data_dir: str | Path, split: str = "train") -> list[str]:
    return [record["text"] for record in iter_records(data_dir, split)]
