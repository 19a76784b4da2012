"""The scripted test model really writes its script, through the real engine."""

from __future__ import annotations

import pytest

from engine.generate import SamplingParams
from engine.session import InfillEngine
from tests.lsp.scripted_model import scripted_model

PROMPTS = [
    ("def add(a, b):\n    ", "\n"),
    ("x = 1\ny = ", ""),
    ('    s = "😀漢字" ', "\n"),
    ("def add(a, b):\n    ret", "\n"),
]


@pytest.mark.parametrize(("prefix", "suffix"), PROMPTS)
def test_writes_the_script_then_stops(tokenizer, prefix, suffix):
    engine = InfillEngine(scripted_model(tokenizer, "return a + b"), tokenizer, max_seq_len=256)
    completion = engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=32))
    # After "ret", token healing re-creates those characters and they are not repeated.
    assert completion.text == ("urn a + b" if prefix.endswith("ret") else "return a + b")
    assert completion.stats.stop_reason == "eot"


def test_looping_never_stops(tokenizer):
    engine = InfillEngine(scripted_model(tokenizer, "return a + b", loop=True), tokenizer, max_seq_len=256)
    completion = engine.complete("def add(a, b):\n    ", "\n", params=SamplingParams(max_new_tokens=20))
    assert completion.text.startswith("return a + breturn a + b")
    assert completion.stats.stop_reason == "max_tokens"


def test_scripts_need_distinct_tokens(tokenizer):
    with pytest.raises(ValueError, match="distinct"):
        scripted_model(tokenizer, "a a a a")
