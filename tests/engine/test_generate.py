"""Sampling and the stopping rules of generation."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.generate import SamplingParams, TokenStream, greedy, sample
from engine.model import KVCache, Transformer
from engine.prompts import build_infill_prompt
from engine.session import InfillEngine
from tests.fixtures import random_model, tiny_args


def test_sample_greedy_and_top_p():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample(logits, 0.0, 0.9, None) == 1
    generator = torch.Generator().manual_seed(0)
    # A tiny top_p keeps only the most likely token, whatever the temperature.
    assert {sample(logits, 5.0, 1e-6, generator) for _ in range(50)} == {1}
    # top_p = 0.99 at high temperature reaches other tokens, and a seed repeats the draw.
    draws = [sample(logits, 5.0, 0.99, torch.Generator().manual_seed(s)) for s in range(40)]
    assert len(set(draws)) > 1
    assert draws == [sample(logits, 5.0, 0.99, torch.Generator().manual_seed(s)) for s in range(40)]


class EndsAfter(Transformer):
    """A random model that strongly prefers <EOT> from a given position on."""

    eot_id: int = 0
    eot_from: int = 0

    def forward(self, tokens, start_pos=0, cache=None, slot=0, last_only=False):
        logits = super().forward(tokens, start_pos, cache, slot, last_only)
        if start_pos + tokens.shape[1] - 1 >= self.eot_from:
            logits[..., self.eot_id] += 1e4
        return logits


def engine_for(model: Transformer, tokenizer) -> InfillEngine:
    return InfillEngine(model, tokenizer, max_seq_len=512, cache_slots=1)


def test_stops_at_eot(tokenizer):
    model = EndsAfter(tiny_args())
    model.load_state_dict(random_model(tiny_args()).state_dict())
    prompt_len = len(engine_for(model, tokenizer).tokenizer.encode("x = 1")) + 10
    model.eot_id, model.eot_from = tokenizer.eot_id, 10_000
    free = engine_for(model, tokenizer).complete("x = 1\n", "\n", params=SamplingParams(max_new_tokens=20))
    assert free.stats.stop_reason == "max_tokens" and free.stats.generated_tokens == 20
    model.eot_from = prompt_len  # <EOT> a few tokens into generation
    done = engine_for(model, tokenizer).complete("x = 1\n", "\n", params=SamplingParams(max_new_tokens=20))
    assert done.stats.stop_reason == "eot"
    assert 0 < done.stats.generated_tokens < 20
    assert tokenizer.decode_infilling(tokenizer.encode_infilling(done.text)) == done.text


def test_stop_strings_cut_the_text_and_streaming_matches(tokenizer):
    engine = engine_for(random_model(tiny_args()), tokenizer)
    free = engine.complete("def f():\n", "\n", params=SamplingParams(max_new_tokens=40))
    assert len(free.text) > 6
    stop = free.text[3:5]
    streamed: list[str] = []
    cut = engine.complete(
        "def f():\n", "\n", params=SamplingParams(max_new_tokens=40, stop=(stop,)), on_text=streamed.append
    )
    assert cut.stats.stop_reason == "stop_string"
    assert cut.text == free.text[: free.text.find(stop)]
    assert "".join(streamed) == cut.text
    # Streaming without a stop string delivers the whole text too.
    streamed.clear()
    again = engine.complete("def f():\n", "\n", params=SamplingParams(max_new_tokens=40), on_text=streamed.append)
    assert "".join(streamed) == again.text == free.text


def test_time_budget_and_cancellation(tokenizer):
    engine = engine_for(random_model(tiny_args()), tokenizer)
    params = SamplingParams(max_new_tokens=50, time_budget_s=0.0)
    assert engine.complete("a = ", "", params=params).stats.stop_reason == "time_budget"
    calls = []

    def cancel_after_three() -> bool:
        calls.append(1)
        return len(calls) >= 3

    # Checked once before the prefill, then after every token: the third check follows token 2.
    result = engine.complete("a = ", "", params=SamplingParams(max_new_tokens=50), cancel=cancel_after_three)
    assert result.stats.stop_reason == "cancelled" and result.stats.generated_tokens == 2
    event = threading.Event()
    event.set()
    assert engine.complete("a = ", "", cancel=event).stats.stop_reason == "cancelled"


def test_cancel_during_prefill_keeps_what_was_written(tokenizer, monkeypatch):
    monkeypatch.setattr("engine.generate.PREFILL_CHUNK", 16)
    model = random_model(tiny_args())
    engine, cold = engine_for(model, tokenizer), engine_for(model, tokenizer)
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(20))
    params = SamplingParams(max_new_tokens=8)
    checks = iter([False, True])  # let the first chunk through, cancel before the second
    stopped = engine.complete(prefix, "\n", params=params, cancel=lambda: next(checks, True))
    assert stopped.stats.stop_reason == "cancelled" and stopped.stats.prefilled_tokens == 16
    resumed = engine.complete(prefix, "\n", params=params)
    assert resumed.stats.reused_tokens == 16
    assert resumed.text == cold.complete(prefix, "\n", params=params).text


def test_generation_stops_when_the_cache_is_full(tokenizer):
    model = random_model(tiny_args())
    prompt = [tokenizer.bos_id, *tokenizer.encode("x = 1")]
    cache = KVCache(model.args, max_seq_len=len(prompt) + 4)
    stream = TokenStream(model, tokenizer, cache, 0, SamplingParams(max_new_tokens=50))
    assert stream.prefill(prompt, 0) == len(prompt)
    assert len(list(stream)) == 5 and stream.stop_reason == "cache_full" and stream.fed == 4


def test_prompt_longer_than_the_cache_is_a_clear_error(tokenizer):
    from engine.session import PromptTooLong

    engine = InfillEngine(random_model(tiny_args()), tokenizer, max_seq_len=32)
    with pytest.raises(PromptTooLong, match="the KV cache holds 32"):
        engine.complete("x = 1\n" * 40, "")


class PrefersPadding(Transformer):
    """A model with more output rows than the tokenizer has pieces, and a taste for them."""

    def forward(self, tokens, start_pos=0, cache=None, slot=0, last_only=False):
        logits = super().forward(tokens, start_pos, cache, slot, last_only)
        logits[..., 1000:] += 1e4
        return logits


def test_ids_past_the_tokenizer_are_never_sampled(tokenizer):
    args = tiny_args(vocab_size=1024)
    model = PrefersPadding(args)
    model.load_state_dict(random_model(args).state_dict())
    engine = InfillEngine(model.eval(), tokenizer, max_seq_len=256)
    for temperature in (0.0, 1.0):
        result = engine.complete("x = ", "\n", params=SamplingParams(max_new_tokens=8, temperature=temperature, seed=1))
        assert result.stats.generated_tokens == 8
        assert tokenizer.decode_infilling(tokenizer.encode_infilling(result.text)) == result.text


def test_a_stream_stopped_by_its_caller_says_why_and_keeps_the_cache(tokenizer):
    model = random_model(tiny_args())
    engine, cold = engine_for(model, tokenizer), engine_for(model, tokenizer)
    prompt = build_infill_prompt(tokenizer, "def f(x):\n    return ", "\n")
    params = SamplingParams(max_new_tokens=40)
    with engine.stream(prompt, params, session="doc") as stream:
        pieces = []
        for piece in stream:
            pieces.append(piece)
            if len(pieces) == 5:
                stream.stop("post_process")
                break
    assert stream.stats.stop_reason == "post_process" and stream.stats.generated_tokens == 5
    assert engine.slot_tokens[stream.stats.slot] == prompt.tokens + stream._tokens.tokens[:4]  # the 5th was not fed
    whole = cold.generate(prompt, params)
    assert whole.text.startswith("".join(pieces))
    again = engine.generate(prompt, params, session="doc")  # greedy: the same as cold, after reuse
    assert again.text == whole.text and again.stats.reused_tokens == len(prompt.tokens) - 1


def test_breaking_out_without_a_reason_counts_as_cancelled(tokenizer):
    engine = engine_for(random_model(tiny_args()), tokenizer)
    prompt = build_infill_prompt(tokenizer, "a = ", "")
    with engine.stream(prompt, SamplingParams(max_new_tokens=40)) as stream:
        for _ in stream:
            break
    assert stream.stats.stop_reason == "cancelled" and stream.stats.generated_tokens == 1
    assert engine.generate(prompt, SamplingParams(max_new_tokens=3)).stats.generated_tokens == 3  # engine free again


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_picks_what_torch_argmax_picks_ties_included(dtype):
    generator = torch.Generator().manual_seed(11)
    for _ in range(20):
        logits = torch.randint(-3, 4, (1000,), generator=generator).to(dtype)  # many ties at the top
        assert greedy(logits) == int(torch.argmax(logits))
    row = torch.randn(3, 1000, generator=generator)[1, :900]  # a row of a verify's output, sliced
    assert greedy(row) == int(torch.argmax(row))
