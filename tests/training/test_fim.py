"""The FIM transform and packing: the paper's rates, exact layouts, reproducibility, boundaries."""

from __future__ import annotations

import shutil

import pytest
from transformers import CodeLlamaTokenizer

from engine.prompts import build_infill_prompt, spm_header_tokens
from tests.training.helpers import stdlib_sources
from training.data import num_rows, pack_epoch, rows_tensor
from training.fim import document_rng, draw_fim, transform_document


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in stdlib_sources()]


@pytest.fixture(scope="module")
def snippets(texts) -> list[str]:
    """Many short documents (30-line windows of real code)."""
    out = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        out += ["".join(lines[i : i + 30]) for i in range(0, len(lines), 30)]
    return out


def split_at(tokens: list[int], token: int) -> tuple[list[int], list[int]]:
    i = tokens.index(token)
    return tokens[:i], tokens[i + 1 :]


def test_parts_reassemble_the_document_and_tokens_decode_to_them(tokenizer, snippets):
    tok = tokenizer
    kinds = set()
    for index, text in enumerate(snippets[:150]):
        doc = transform_document(tok, text, seed=3, epoch=0, index=index)
        kinds.add(doc.kind)
        assert doc.prefix + doc.middle + doc.suffix == text
        if doc.kind == "plain":
            assert doc.tokens[0] == tok.bos_id and doc.tokens[-1] == tok.eos_id
            assert tok.decode(doc.tokens[1:-1]) == text
            continue
        assert doc.tokens[-1] == tok.eot_id and doc.tokens.count(tok.eot_id) == 1
        body = doc.tokens[:-1]
        if doc.kind == "psm":  # [BOS, PRE] prefix [SUF] suffix [MID] middle [EOT]
            assert body[:2] == [tok.bos_id, tok.prefix_id]
            prefix, rest = split_at(body[2:], tok.suffix_id)
            suffix, middle = split_at(rest, tok.middle_id)
            assert tok.decode(prefix) == doc.prefix
            assert tok.decode_infilling(suffix) == doc.suffix
            assert tok.decode_infilling(middle) == doc.middle
        else:  # [BOS, PRE, SUF] suffix [MID] prefix+middle [EOT]
            assert body[:3] == [tok.bos_id, tok.prefix_id, tok.suffix_id]
            suffix, prefix_middle = split_at(body[3:], tok.middle_id)
            assert tok.decode_infilling(suffix) == doc.suffix
            assert tok.decode(prefix_middle) == doc.prefix + doc.middle
    assert kinds == {"plain", "psm", "spm"}


def test_fim_rate_and_spm_share_follow_the_paper():
    n = 4000
    kinds = [draw_fim("x" * 100, document_rng(0, 0, i), 0.9, 0.5)[0] for i in range(n)]
    fim = [k for k in kinds if k != "plain"]
    # Binomial standard deviations: 0.0047 for the FIM rate, 0.0083 for the SPM share.
    assert abs(len(fim) / n - 0.9) < 0.02
    assert abs(fim.count("spm") / len(fim) - 0.5) < 0.035


def test_split_points_are_uniform_character_offsets():
    text = "abcdefghij" * 10
    cut_positions = []
    for i in range(3000):
        _, prefix, middle, _ = draw_fim(text, document_rng(5, 0, i), 1.0, 0.5)
        cut_positions += [len(prefix), len(prefix) + len(middle)]
    # Two sorted uniform draws: each cut is uniform on [0, len]; their mean is len / 2.
    assert abs(sum(cut_positions) / len(cut_positions) - len(text) / 2) < 2.5
    assert min(cut_positions) == 0 and max(cut_positions) == len(text)


def test_each_document_is_reproducible_from_seed_epoch_and_index(tokenizer, snippets):
    text = snippets[7]
    a = transform_document(tokenizer, text, seed=1, epoch=2, index=7)
    b = transform_document(tokenizer, text, seed=1, epoch=2, index=7)
    assert a == b
    others = {transform_document(tokenizer, text, seed=1, epoch=e, index=7).tokens.__repr__() for e in range(8)}
    assert len(others) > 1  # a new epoch draws new splits


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_path, tmp_path_factory) -> CodeLlamaTokenizer:
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    shutil.copy(tokenizer_path, folder / "tokenizer.model")
    return CodeLlamaTokenizer.from_pretrained(folder)


def test_training_examples_extend_the_served_prompts_token_for_token(tokenizer, hf_tokenizer, snippets):
    """The model learns the continuation of exactly the prompt the engine serves (and that
    transformers' CodeLlamaTokenizer builds), so train and serve never disagree."""
    tok = tokenizer
    checked = {"psm": 0, "spm": 0}
    for index, text in enumerate(snippets[:80]):
        doc = transform_document(tok, text, seed=0, epoch=0, index=index)
        if doc.kind == "psm":
            prompt = build_infill_prompt(tok, doc.prefix, doc.suffix, "psm").tokens
            assert prompt == hf_tokenizer(doc.prefix, suffix=doc.suffix)["input_ids"]
            assert doc.tokens == prompt + tok.encode_infilling(doc.middle) + [tok.eot_id]
        elif doc.kind == "spm":
            header = spm_header_tokens(tok, doc.suffix)
            served = build_infill_prompt(tok, doc.prefix, doc.suffix, "spm", token_healing=False).tokens
            assert served == hf_tokenizer(doc.prefix, suffix=doc.suffix, suffix_first=True)["input_ids"]
            assert served[: len(header)] == header == doc.tokens[: len(header)]
            # SPM encodes prefix + middle as one string: no token straddles the cut.
            assert doc.tokens[len(header) :] == tok.encode(doc.prefix + doc.middle) + [tok.eot_id]
        else:
            continue
        checked[doc.kind] += 1
    assert checked["psm"] > 10 and checked["spm"] > 10


def test_packing_keeps_every_fim_example_inside_one_row(tokenizer, snippets):
    tok, seq_len = tokenizer, 256
    stream, stats = pack_epoch(tok, snippets, seq_len, seed=0, epoch=0)
    tokens = stream.tolist()
    assert stats.documents == len(snippets) == tokens.count(tok.bos_id)
    assert stats.tokens == len(tokens)
    starts = [i + 1 for i, t in enumerate(tokens[:-1]) if t == tok.bos_id and tokens[i + 1] == tok.prefix_id]
    assert len(starts) == stats.psm + stats.spm > 0
    assert stats.at_boundary > 0  # some examples fell on a boundary and were left plain
    for start in starts:
        end = tokens.index(tok.eot_id, start)
        assert (start - 1) // seq_len == end // seq_len, "a FIM example crosses a row boundary"
    # Rows are consecutive windows of seq_len + 1 tokens.
    rows = rows_tensor(stream, seq_len, 3, 2)
    assert rows.shape == (2, seq_len + 1)
    assert rows[0].tolist() == tokens[3 * seq_len : 4 * seq_len + 1]
    assert rows[1].tolist() == tokens[4 * seq_len : 5 * seq_len + 1]
    assert num_rows(stream, seq_len) == (len(tokens) - 1) // seq_len


def test_epochs_shuffle_documents_reproducibly(tokenizer, snippets):
    a, _ = pack_epoch(tokenizer, snippets[:40], 128, seed=0, epoch=1)
    b, _ = pack_epoch(tokenizer, snippets[:40], 128, seed=0, epoch=1)
    c, _ = pack_epoch(tokenizer, snippets[:40], 128, seed=0, epoch=2)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
