"""Tokenizer and prompt layouts against transformers' CodeLlamaTokenizer and Meta's rules."""

from __future__ import annotations

import itertools
import shutil

import pytest
import sentencepiece as spm
import torch
from transformers import CodeLlamaTokenizer

from engine.generate import SamplingParams, TokenStream
from engine.model import KVCache
from engine.prompts import build_infill_prompt, infilling_prompt_tokens
from engine.tokenizer import Tokenizer, TokenizerError
from tests.fixtures import random_model, tiny_args, training_text

CASES = [
    ("def add(a, b):\n    return a", " + b\n\n\nprint(add(1, 2))\n"),
    ('def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"),
    ("x = 1\n", "  y\t= 2"),
    ("    indented", "\n"),
    ("s = 'héllo wörld 😀 日本語'\n", "# ünïcode ☃\n"),
    ("a▁b  ", "▁c"),
]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_path, tmp_path_factory) -> CodeLlamaTokenizer:
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    shutil.copy(tokenizer_path, folder / "tokenizer.model")
    return CodeLlamaTokenizer.from_pretrained(folder)


@pytest.mark.parametrize(("prefix", "suffix"), CASES)
def test_psm_matches_transformers(tokenizer, hf_tokenizer, prefix, suffix):
    expected = hf_tokenizer(prefix, suffix=suffix)["input_ids"]
    assert infilling_prompt_tokens(tokenizer, prefix, suffix) == expected
    assert build_infill_prompt(tokenizer, prefix, suffix, "psm").tokens == expected


@pytest.mark.parametrize(("prefix", "suffix"), CASES)
def test_spm_matches_transformers(tokenizer, hf_tokenizer, prefix, suffix):
    expected = hf_tokenizer(prefix, suffix=suffix, suffix_first=True)["input_ids"]
    assert infilling_prompt_tokens(tokenizer, prefix, suffix, suffix_first=True) == expected
    assert build_infill_prompt(tokenizer, prefix, suffix, "spm", token_healing=False).tokens == expected


def test_reference_layouts_with_pieces_looked_up_by_name(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.path))
    pre, suf, mid, eot = (sp.piece_to_id(p) for p in ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"))
    assert (tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id, tokenizer.eot_id) == (pre, suf, mid, eot)
    # Meta's encode_infilling: encode("☺" + s) without its first two tokens.
    for _, suffix in CASES:
        assert tokenizer.encode_infilling(suffix) == sp.encode("☺" + suffix)[2:]
        if "▁" not in suffix:  # SentencePiece reads a literal "▁" as a space (so does the reference)
            assert tokenizer.decode_infilling(tokenizer.encode_infilling(suffix)) == suffix
    # No implicit leading space: encode() adds one, encode_infilling() does not.
    assert tokenizer.decode(tokenizer.encode("x")) == "x"
    assert tokenizer.decode_infilling(tokenizer.encode("x")) == " x"
    assert tokenizer.decode_infilling(tokenizer.encode_infilling("x")) == "x"
    assert tokenizer.decode_infilling(tokenizer.encode_infilling(" x")) == " x"


def test_tokenizer_without_fim_pieces_cannot_infill(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_text()[:200_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "plain"), vocab_size=500, model_type="bpe", minloglevel=2
    )
    plain = Tokenizer(tmp_path / "plain.model")
    assert not plain.can_infill
    with pytest.raises(TokenizerError, match="this model cannot infill"):
        infilling_prompt_tokens(plain, "a", "b")


def test_missing_or_bad_tokenizer_file(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        Tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        Tokenizer(tmp_path / "bad.model")


def healed_prefixes(tokenizer: Tokenizer) -> list[str]:
    """Prefixes that end inside a token: the last token of `word` cut short."""
    out = []
    for word in ["enumerate", "isinstance", "return", "self.assertEqual", "coroutine"]:
        for cut in range(2, len(word)):
            prefix = "def f(items):\n    for i, x in " + word[:cut]
            if build_infill_prompt(tokenizer, prefix, "\n").healing:
                out.append(prefix)
    return out


def test_token_healing_backs_up_to_a_token_boundary(tokenizer):
    prefixes = healed_prefixes(tokenizer)
    assert len(prefixes) >= 10
    for prefix in prefixes:
        prompt = build_infill_prompt(tokenizer, prefix, "\n", "spm")
        full = infilling_prompt_tokens(tokenizer, prefix, "\n", suffix_first=True)
        assert prompt.tokens == full[:-1]  # the prefix's last token is removed...
        assert prompt.healing == prefix[len(prefix) - len(prompt.healing) :]  # ...and its text must come back
        assert tokenizer.decode(full[len(prompt.tokens) - len(full) - 1 :]).endswith(prompt.healing)
    assert build_infill_prompt(tokenizer, prefixes[0], "\n", "spm", token_healing=False).healing == ""
    assert build_infill_prompt(tokenizer, prefixes[0], "\n", "psm").healing == ""


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_healing_generation_reproduces_the_typed_characters(tokenizer, temperature):
    args = tiny_args()
    model = random_model(args)
    cache = KVCache(args, max_seq_len=256)
    for i, prefix in enumerate(healed_prefixes(tokenizer)[:8]):
        prompt = build_infill_prompt(tokenizer, prefix, "\n", "spm")
        params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=i)
        stream = TokenStream(model, tokenizer, cache, 0, params, prompt.healing)
        stream.prefill(prompt.tokens, 0)
        text = tokenizer.decode_infilling(list(itertools.islice(stream, params.max_new_tokens)))
        assert text.startswith(prompt.healing), (prefix, prompt.healing, text)


def test_healing_is_skipped_when_the_prefix_is_one_token(tokenizer):
    assert build_infill_prompt(tokenizer, "def", "").healing == ""
    assert torch.tensor(build_infill_prompt(tokenizer, "", "x").tokens).numel() > 0
