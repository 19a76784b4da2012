"""Training batches: documents -> FIM examples -> one packed token stream per epoch.

Each epoch shuffles the documents (seeded by epoch), draws every document's FIM transform
(seeded by document), and concatenates the examples into one stream cut into rows of
`seq_len` inputs: row r is stream[r*L : r*L + L + 1] (the extra token is the last
target). A FIM example that would straddle a row boundary is replaced by its plain text,
as in the paper: the model never sees half of a transformed document.

The position in the data is two integers (epoch, row), saved in every checkpoint; the
stream of an epoch is a pure function of (corpus, tokenizer, seed, epoch), so a resumed
or a distributed run sees exactly the rows an uninterrupted single run would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.tokenizer import Tokenizer
from training.fim import plain_tokens, transform_document


@dataclass
class PackStats:
    documents: int = 0
    psm: int = 0
    spm: int = 0
    plain: int = 0
    """Documents the draw left plain (1 - fim_rate of them)."""
    at_boundary: int = 0
    """FIM examples replaced by plain text because they would cross a row boundary."""
    tokens: int = 0


def split_documents(texts: Sequence[str], max_chars: int) -> list[str]:
    """Cut documents longer than max_chars into consecutive pieces at line boundaries.

    The paper leaves a document that crosses a row boundary untransformed, so with short
    rows (a small CPU model's 512-1,024 tokens) whole source files are rarely FIM examples;
    pieces much shorter than a row mostly are. 0 keeps documents whole.
    """
    if max_chars <= 0:
        return list(texts)
    pieces: list[str] = []
    for text in texts:
        if len(text) <= max_chars:
            pieces.append(text)
            continue
        current = ""
        for line in text.splitlines(keepends=True):
            if current and len(current) + len(line) > max_chars:
                pieces.append(current)
                current = ""
            current += line
        if current:
            pieces.append(current)
    return pieces


def crosses_boundary(start: int, length: int, seq_len: int) -> bool:
    """Would tokens [start, start + length) span two rows of seq_len inputs?"""
    return start // seq_len != (start + length - 1) // seq_len


def pack_epoch(
    tok: Tokenizer,
    texts: Sequence[str],
    seq_len: int,
    seed: int,
    epoch: int,
    fim_rate: float = 0.9,
    spm_rate: float = 0.5,
    shuffle: bool = True,
) -> tuple[np.ndarray, PackStats]:
    """The epoch's token stream (uint16 when the vocabulary allows: half the memory)."""
    order = list(range(len(texts)))
    if shuffle:
        random.Random(f"order/{seed}/{epoch}").shuffle(order)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    stats = PackStats()
    parts: list[np.ndarray] = []
    position = 0
    for index in order:
        doc = transform_document(tok, texts[index], seed, epoch, index, fim_rate, spm_rate)
        tokens = doc.tokens
        if doc.kind != "plain" and crosses_boundary(position, len(tokens), seq_len):
            tokens = plain_tokens(tok, texts[index])
            stats.at_boundary += 1
        else:
            setattr(stats, doc.kind, getattr(stats, doc.kind) + 1)
        stats.documents += 1
        parts.append(np.asarray(tokens, dtype=dtype))
        position += len(tokens)
    stats.tokens = position
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return stream, stats


def num_rows(stream: np.ndarray, seq_len: int) -> int:
    return max(0, (len(stream) - 1) // seq_len)


def rows_tensor(stream: np.ndarray, seq_len: int, first_row: int, count: int) -> torch.Tensor:
    """Rows first_row .. first_row + count - 1 as a (count, seq_len + 1) int64 tensor."""
    start, end = first_row * seq_len, (first_row + count) * seq_len + 1
    flat = torch.from_numpy(stream[start:end].astype(np.int64))
    # Row i is flat[i*L : i*L + L + 1]: consecutive rows share one token (target of one, input of the next).
    return flat.unfold(0, seq_len + 1, seq_len)


@dataclass
class DataPosition:
    epoch: int = 0
    row: int = 0
    """Rows of this epoch consumed by all ranks together."""


@dataclass
class TrainBatches:
    """Micro-batches for one rank; all ranks advance one shared position."""

    tok: Tokenizer
    texts: Sequence[str]
    seq_len: int
    seed: int
    fim_rate: float
    spm_rate: float
    micro_batch_size: int
    rank: int = 0
    world_size: int = 1
    position: DataPosition = field(default_factory=DataPosition)
    log: object = print
    _stream: np.ndarray | None = None
    _stream_epoch: int = -1

    def stream(self, epoch: int) -> np.ndarray:
        if self._stream_epoch != epoch:
            self._stream, stats = pack_epoch(
                self.tok, self.texts, self.seq_len, self.seed, epoch, self.fim_rate, self.spm_rate
            )
            self._stream_epoch = epoch
            if self.rank == 0 and self.log:
                self.log(
                    f"epoch {epoch}: {stats.documents} documents, {stats.tokens:,} tokens, "
                    f"{num_rows(self._stream, self.seq_len):,} rows of {self.seq_len}; FIM examples "
                    f"{(stats.psm + stats.spm) / max(stats.documents, 1):.0%} (psm {stats.psm}, spm {stats.spm}), "
                    f"plain {stats.plain}, left plain at a row boundary {stats.at_boundary}"
                )
        return self._stream

    def rows_per_epoch(self, epoch: int = 0) -> int:
        return num_rows(self.stream(epoch), self.seq_len)

    def next(self) -> torch.Tensor:
        """This rank's (micro_batch_size, seq_len + 1) rows; moves the shared position."""
        needed = self.micro_batch_size * self.world_size
        stream = self.stream(self.position.epoch)
        if num_rows(stream, self.seq_len) < needed:
            if self.position.row == 0:
                raise ValueError(
                    f"the corpus packs into {num_rows(stream, self.seq_len)} rows of {self.seq_len} tokens, fewer "
                    f"than one step needs ({needed}): lower data.seq_len or train.micro_batch_size, or add data"
                )
        if self.position.row + needed > num_rows(stream, self.seq_len):
            self.position = DataPosition(self.position.epoch + 1, 0)
            stream = self.stream(self.position.epoch)
        first = self.position.row + self.rank * self.micro_batch_size
        self.position = DataPosition(self.position.epoch, self.position.row + needed)
        return rows_tensor(stream, self.seq_len, first, self.micro_batch_size)
