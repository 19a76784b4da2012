"""Incremental decoding equals SentencePiece's own decode of the whole middle."""

from __future__ import annotations

import random
import re

from engine.middle_text import MiddleText


def collapse(text: str) -> str:
    return re.sub("\ufffd+", "\ufffd", text)


def test_token_by_token_text_equals_decode_infilling(tokenizer):
    rng = random.Random(0)
    specials = {tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id, tokenizer.eot_id}
    specials |= {tokenizer.bos_id, tokenizer.eos_id}
    ordinary = [t for t in range(tokenizer.vocab_size) if t not in specials]
    byte_tokens = [t for t in ordinary if tokenizer.sp.is_byte(t)]
    for _ in range(300):
        tokens = [rng.choice(byte_tokens if rng.random() < 0.3 else ordinary) for _ in range(rng.randint(1, 40))]
        middle = MiddleText(tokenizer)
        streamed = "".join(middle.add(t) for t in tokens) + middle.finish()
        expected = tokenizer.decode_infilling(tokens).rstrip("\ufffd")
        # Invalid UTF-8 (random byte tokens) becomes U+FFFD in both; SentencePiece may use one
        # replacement for a run of bad bytes where Python uses several.
        assert collapse(middle.text.rstrip("\ufffd")) == collapse(expected), tokens
        assert streamed == middle.text


def test_a_character_split_over_byte_tokens_appears_when_complete(tokenizer):
    tokens = tokenizer.encode_infilling("x = 'é😀'")
    middle = MiddleText(tokenizer)
    pieces = [middle.add(t) for t in tokens]
    assert "".join(pieces) == "x = 'é😀'" and all("\ufffd" not in p for p in pieces)


def test_healing_is_removed_and_stop_strings_cut_and_held_back(tokenizer):
    middle = MiddleText(tokenizer, healing="ret", stop=("\n\n",))
    pieces = [middle.add(t) for t in tokenizer.encode_infilling("return a\n\nb")]
    assert middle.text == "urn a" and middle.stopped
    assert "".join(pieces) == "urn a"
