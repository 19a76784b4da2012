"""Micro-batches across epochs and ranks: one shared position, no row seen twice per epoch."""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import stdlib_sources
from training.data import DataPosition, TrainBatches, num_rows, pack_epoch, rows_tensor, split_documents


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in stdlib_sources()[:6]]


def batches(tok, texts, rank=0, world_size=1, micro=2, position=None) -> TrainBatches:
    return TrainBatches(
        tok, texts, 128, 0, 0.9, 0.5, micro, rank, world_size, position=position or DataPosition(), log=None
    )


def test_ranks_split_what_one_process_reads(tokenizer, texts):
    one = batches(tokenizer, texts, micro=1)
    rank0, rank1 = batches(tokenizer, texts, 0, 2, micro=1), batches(tokenizer, texts, 1, 2, micro=1)
    for _ in range(5):
        a, b = rank0.next(), rank1.next()
        assert torch.equal(one.next(), a) and torch.equal(one.next(), b)
        assert rank0.position == rank1.position == one.position


def test_epochs_roll_over_and_a_saved_position_continues_the_stream(tokenizer, texts):
    reader = batches(tokenizer, texts)
    rows = reader.rows_per_epoch(0)
    per_epoch = rows // 2
    seen = [reader.next() for _ in range(per_epoch)]
    stream0, _ = pack_epoch(tokenizer, texts, 128, 0, 0)
    assert torch.equal(torch.cat(seen), rows_tensor(stream0, 128, 0, per_epoch * 2))
    assert reader.position == DataPosition(0, per_epoch * 2)

    first_of_epoch_1 = reader.next()
    assert reader.position == DataPosition(1, 2)
    stream1, _ = pack_epoch(tokenizer, texts, 128, 0, 1)
    assert torch.equal(first_of_epoch_1, rows_tensor(stream1, 128, 0, 2))
    assert num_rows(stream1, 128) > 0

    resumed = batches(tokenizer, texts, position=DataPosition(1, 2))
    assert torch.equal(resumed.next(), reader.next())


def test_a_corpus_too_small_for_one_step_says_what_to_lower(tokenizer):
    with pytest.raises(ValueError, match=r"lower data\.seq_len or train\.micro_batch_size"):
        batches(tokenizer, ["x = 1\n"]).next()


def test_long_documents_are_cut_at_line_boundaries_so_fim_examples_fit(tokenizer, texts):
    pieces = split_documents(texts, 1500)
    assert "".join(pieces) == "".join(texts) and len(pieces) > 2 * len(texts)
    assert all(len(p) <= 1500 and p.endswith("\n") for p in pieces)
    assert split_documents(texts, 0) == texts

    def fim_share(docs: list[str]) -> float:
        _, stats = pack_epoch(tokenizer, docs, 1024, 0, 0)
        return (stats.psm + stats.spm) / stats.documents

    assert fim_share(pieces) > fim_share(texts) + 0.2
