"""Speculative decoding by prompt lookup: drafts from the prompt, checked in one pass, and
greedy output exactly that of plain decoding."""

from __future__ import annotations

import dataclasses

import pytest

from engine import generate
from engine.checkpoints import load_model
from engine.lookup import PromptLookup
from engine.prompts import InfillPrompt
from engine.sampling import SamplingParams
from engine.session import InfillEngine
from tests.lsp.helpers import SCRIPT
from tests.lsp.scripted_model import write_scripted_checkpoint


def test_the_draft_is_what_followed_the_latest_earlier_occurrence():
    lookup = PromptLookup([5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 3])
    for token in (4, 5, 6):
        lookup.add(token)
    assert lookup.draft(3) == [7, 1, 2]  # (4 5 6) never occurred; (5 6) did, last followed by 7 1 2
    assert PromptLookup([1, 2, 3]).draft() == []  # nothing repeats
    short = PromptLookup([1, 2, 9, 1, 2])
    assert short.draft(5) == [9, 1, 2]


def engine_for(path) -> InfillEngine:
    model, tok, _ = load_model(path, "cpu", "float32")
    return InfillEngine(model, tok, max_seq_len=1024, cache_slots=1)


def run(engine, prompt, lookup: bool, **params):
    params = SamplingParams(max_new_tokens=params.pop("max_new_tokens", 40), prompt_lookup=lookup, **params)
    engine.reset_cache()
    return engine.generate(prompt, params)


def test_a_draft_accepted_then_running_into_eot_gives_plain_output(scripted_checkpoint, monkeypatch):
    engine = engine_for(scripted_checkpoint)
    tok = engine.tokenizer
    # The prompt already holds the script and more after it: the draft after "return" is
    # " a + b" (kept) and then what followed in the prompt (rejected: the model ends with <EOT>).
    # A first draft long enough to run past " a + b" (the default, 3, ends right at it):
    monkeypatch.setattr("engine.generate.DRAFT_START", 5)
    text = f"x = 1\n{SCRIPT}\n    print(x)\n"
    prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *tok.encode(text)])
    plain, fast = run(engine, prompt, False), run(engine, prompt, True)
    assert fast.text == plain.text == SCRIPT
    assert fast.stats.stop_reason == plain.stats.stop_reason == "eot"
    assert fast.stats.accepted_tokens >= 3 and fast.stats.drafted_tokens > fast.stats.accepted_tokens


def test_a_draft_rejected_at_its_first_token_gives_plain_output(scripted_checkpoint):
    engine = engine_for(scripted_checkpoint)
    tok = engine.tokenizer
    first, *_ = tok.encode_infilling(SCRIPT)
    # In the prompt "return" is followed by something else than the script's next token.
    text = "return -1\nreturn -1\n"
    prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *tok.encode(text)])
    plain, fast = run(engine, prompt, False), run(engine, prompt, True)
    assert fast.text == plain.text == SCRIPT
    assert fast.stats.drafted_tokens > 0 and fast.stats.accepted_tokens < fast.stats.drafted_tokens
    assert first in tok.encode_infilling(SCRIPT)


def test_greedy_output_is_identical_on_a_random_model_at_many_prompts(tiny_checkpoint, looping_checkpoint):
    from pathlib import Path

    source = (Path(__file__).parents[2] / "engine" / "postprocess.py").read_text(encoding="utf-8")
    for path in (tiny_checkpoint, looping_checkpoint):
        engine = engine_for(path)
        tok = engine.tokenizer
        drafted = 0
        for start in range(0, 6000, 400):
            ids = tok.encode(source[start : start + 600])
            prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *ids])
            plain, fast = run(engine, prompt, False, max_new_tokens=48), run(engine, prompt, True, max_new_tokens=48)
            assert fast.text == plain.text, start
            assert fast.stats.generated_tokens == plain.stats.generated_tokens
            drafted += fast.stats.drafted_tokens
        assert drafted > 0  # the drafts were really checked


@pytest.mark.parametrize("room", [1, 3])
def test_drafts_stop_at_the_cache_and_the_token_limit(looping_checkpoint, room):
    engine = engine_for(looping_checkpoint)
    tok = engine.tokenizer
    ids = tok.encode_infilling(SCRIPT) * 4
    prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *ids])
    plain = run(engine, prompt, False, max_new_tokens=len(ids) // 2 + room)
    fast = run(engine, prompt, True, max_new_tokens=len(ids) // 2 + room)
    assert fast.text == plain.text and fast.stats.generated_tokens == plain.stats.generated_tokens
    small = InfillEngine(engine.model, tok, max_seq_len=len(prompt.tokens) + room + 1, cache_slots=1)
    assert run(small, prompt, True).text == run(small, prompt, False).text
    assert dataclasses.replace(SamplingParams(), temperature=0.5).prompt_lookup  # sampling ignores it: greedy only


def test_no_pass_checks_a_token_after_the_stop_string(tokenizer_path, tmp_path, monkeypatch):
    # A completion shown to the line's end stops at the first newline: a draft running past it,
    # or a pass after a newline token, computes what is thrown away.
    script = "total = a\nreturn b"
    engine = engine_for(write_scripted_checkpoint(tmp_path / "model", tokenizer_path, script))
    tok = engine.tokenizer
    checked: list[list[int]] = []
    real_verify = generate.verify
    monkeypatch.setattr(
        generate, "verify", lambda model, tokens, *a: checked.append(tokens) or real_verify(model, tokens, *a)
    )
    monkeypatch.setattr("engine.generate.DRAFT_START", 7)  # long enough to reach the newline and past it
    text = f"{script}\n" * 4 + "#"  # after a token not in the script, the model starts it again
    prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *tok.encode(text)])
    plain, fast = run(engine, prompt, False, stop=("\n",)), run(engine, prompt, True, stop=("\n",))
    assert fast.text == plain.text == "total = a"
    assert fast.stats.accepted_tokens >= 2  # drafts were checked and kept...
    newline = [t for t in range(tok.vocab_size) if b"\n" in tok.token_bytes[t]]
    assert checked and not any(t in newline for tokens in checked for t in tokens)  # ...never with a newline
    no_stop = run(engine, prompt, True)  # without the stop string, drafts run through newlines
    assert no_stop.text.startswith(plain.text + "\n") and any(t in newline for tokens in checked for t in tokens)
