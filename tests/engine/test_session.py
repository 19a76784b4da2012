"""KV-cache reuse across keystrokes: identical to cold runs, prefilling only what changed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.generate import SamplingParams
from engine.prompts import build_infill_prompt
from engine.session import InfillEngine, common_prefix_length
from engine.window import cursor_window
from tests.fixtures import random_model, tiny_args

FILE_A = '''import os
import sys


def read_config(path):
    """Read a key=value file into a dict."""
    values = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def main():
    config = read_config(sys.argv[1])
    |

if __name__ == "__main__":
    main()
'''

FILE_B = """class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        |
"""


@dataclass
class Document:
    name: str
    text: str
    cursor: int

    @classmethod
    def parse(cls, name: str, marked: str) -> Document:
        return cls(name, marked.replace("|", ""), marked.index("|"))

    def type(self, chars: str) -> None:
        self.text = self.text[: self.cursor] + chars + self.text[self.cursor :]
        self.cursor += len(chars)

    def backspace(self) -> None:
        self.text = self.text[: self.cursor - 1] + self.text[self.cursor :]
        self.cursor -= 1

    def insert_at_line(self, line: int, chars: str) -> None:
        offset = sum(len(s) + 1 for s in self.text.split("\n")[:line])
        self.text = self.text[:offset] + chars + self.text[offset:]
        self.cursor += len(chars) if offset <= self.cursor else 0


def typing_session():
    """(label, document) after each edit: 60 edits over two files."""
    a, b = Document.parse("a.py", FILE_A), Document.parse("b.py", FILE_B)
    for ch in "print(config.get('na"[:20]:
        a.type(ch)
        yield "type", a
    for _ in range(5):
        a.backspace()
        yield "backspace", a
    a.type("get('debug', False))\n    for key in sorted(config):\n        ")
    yield "paste", a
    for ch in "print(key":
        a.type(ch)
        yield "type", a
    a.insert_at_line(2, "import json\n")
    yield "edit above", a
    for ch in "), ":
        a.type(ch)
        yield "type", a
    for ch in "self.it":
        b.type(ch)
        yield "switch" if ch == "s" else "type", b
    for ch in "ems.a":
        b.type(ch)
        yield "type", b
    a.type("j")
    yield "switch back", a
    for ch in "son.dumps(":
        a.type(ch)
        yield "type", a


def test_session_has_at_least_50_edits_of_every_kind():
    labels = [label for label, _ in typing_session()]
    assert len(labels) >= 50
    assert {"type", "backspace", "paste", "edit above", "switch", "switch back"} <= set(labels)


@pytest.mark.parametrize("fmt", ["spm", "psm"])
def test_typing_session_matches_cold_runs_and_prefills_only_changes(tokenizer, fmt):
    model = random_model(tiny_args())
    warm = InfillEngine(model, tokenizer, max_seq_len=1024, cache_slots=2)
    cold = InfillEngine(model, tokenizer, max_seq_len=1024, cache_slots=1)
    params = SamplingParams(max_new_tokens=6)
    last_prompt: dict[str, list[int]] = {}
    warm_prefilled = cold_prefilled = 0
    for label, doc in typing_session():
        window = cursor_window(doc.text, doc.cursor)
        prompt = build_infill_prompt(tokenizer, window.prefix, window.suffix, fmt)
        result = warm.complete(window.prefix, window.suffix, fmt=fmt, params=params, session=doc.name)
        cold.reset_cache()
        reference = cold.complete(window.prefix, window.suffix, fmt=fmt, params=params)

        assert result.text == reference.text, (label, doc.text[: doc.cursor][-30:])
        stats = result.stats
        assert stats.prompt_tokens == len(prompt.tokens) == reference.stats.prompt_tokens
        assert stats.reused_tokens + stats.prefilled_tokens == stats.prompt_tokens
        assert reference.stats.reused_tokens == 0
        previous = last_prompt.get(doc.name)
        if previous is not None:
            # At least everything shared with this file's previous prompt is reused ...
            shared = min(common_prefix_length(previous, prompt.tokens), len(prompt.tokens) - 1)
            assert stats.reused_tokens >= shared, label
        if label == "type" and fmt == "spm" and previous is not None:
            # ... so a keystroke at the end of an SPM prompt prefills a token or two.
            assert stats.prefilled_tokens <= 3, (label, stats)
        if label == "switch":
            assert stats.reused_tokens < 10  # a new file: its own cache slot
        last_prompt[doc.name] = prompt.tokens
        warm_prefilled += stats.prefilled_tokens
        cold_prefilled += reference.stats.prefilled_tokens
    # SPM keeps the typed prefix last: almost nothing is prefilled again.
    assert warm_prefilled < cold_prefilled * (0.15 if fmt == "spm" else 0.6)


def test_switching_files_keeps_both_caches_warm_without_session_keys(tokenizer):
    engine = InfillEngine(random_model(tiny_args()), tokenizer, max_seq_len=1024, cache_slots=2)
    params = SamplingParams(max_new_tokens=4)
    a, b = Document.parse("a.py", FILE_A), Document.parse("b.py", FILE_B)
    first_a = engine.complete(a.text[: a.cursor], a.text[a.cursor :], params=params)
    first_b = engine.complete(b.text[: b.cursor], b.text[b.cursor :], params=params)
    assert first_b.stats.slot != first_a.stats.slot
    a.type("x")
    back = engine.complete(a.text[: a.cursor], a.text[a.cursor :], params=params)
    assert back.stats.slot == first_a.stats.slot and back.stats.prefilled_tokens <= 3
    # With one slot, the switch back has to prefill everything again.
    single = InfillEngine(engine.model, tokenizer, max_seq_len=1024, cache_slots=1)
    single.complete(a.text[: a.cursor], a.text[a.cursor :], params=params)
    single.complete(b.text[: b.cursor], b.text[b.cursor :], params=params)
    again = single.complete(a.text[: a.cursor], a.text[a.cursor :], params=params)
    assert again.stats.prefilled_tokens > 100
