"""The two HTTP dialects as data: the bodies we send and the events we read.

llama.cpp's side is tested end to end against the real server (tests/lsp/test_llama_server.py);
vLLM needs a GPU, so its documented event shape is checked here."""

from __future__ import annotations

import math

import pytest

from engine.sampling import SamplingParams
from engine.wire import WireError, completion_body, parse_event, parse_models


def test_openai_body_sends_token_ids_and_asks_for_them_back():
    greedy = SamplingParams(temperature=0.0, top_p=0.9)
    body = completion_body("openai", [1, 2, 3], 16, greedy, logit_bias={7: 100.0}, model="team-13b", stream=True)
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 16 and body["model"] == "team-13b"
    assert body["logprobs"] == 1 and body["return_tokens_as_token_ids"] is True
    assert body["logit_bias"] == {"7": 100.0} and body["temperature"] == 0.0
    assert body["stream_options"]["include_usage"] is True
    # a whole answer: stream_options is only allowed with stream (OpenAI and vLLM refuse it)
    assert "stream_options" not in completion_body("openai", [1], 1, greedy, stream=False)


def test_llamacpp_body_caches_the_prompt_and_bans_with_false():
    sampled = SamplingParams(temperature=0.8, top_p=0.95, seed=3)
    body = completion_body("llamacpp", [1, 2], 8, sampled, logit_bias={5: -math.inf, 6: 100.0})
    assert body["cache_prompt"] is True and body["return_tokens"] is True and body["n_predict"] == 8
    assert body["logit_bias"] == [[5, False], [6, 100.0]] and body["seed"] == 3 and body["top_p"] == 0.95


def test_vllm_events_carry_ids_as_token_id_strings_and_cached_usage():
    event = {
        "choices": [{"text": " x", "finish_reason": None, "logprobs": {"tokens": ["token_id:921", "token_id:5"]}}],
        "usage": {"prompt_tokens": 300, "prompt_tokens_details": {"cached_tokens": 288}},
    }
    chunk = parse_event("openai", event)
    assert chunk.tokens == [921, 5] and chunk.cached_tokens == 288 and chunk.prompt_tokens == 300
    with pytest.raises(WireError, match="not 'token_id:N'"):
        parse_event("openai", {"choices": [{"text": "x", "logprobs": {"tokens": ["x"]}}]})


def test_llamacpp_events_and_errors():
    event = {"content": "é", "tokens": [42], "stop": False, "tokens_evaluated": 12, "timings": {"cache_n": 10}}
    chunk = parse_event("llamacpp", event | {"completion_probabilities": [{"bytes": [195, 169]}]})
    assert (chunk.tokens, chunk.sent_bytes, chunk.cached_tokens, chunk.prompt_tokens) == ([42], b"\xc3\xa9", 10, 12)
    assert parse_event("llamacpp", {"stop": True, "stop_type": "limit", "tokens": []}).finish_reason == "limit"
    with pytest.raises(WireError, match="the server reported an error: model is loading"):
        parse_event("openai", {"error": {"message": "model is loading"}})
    with pytest.raises(WireError, match="list of token ids"):
        parse_event("llamacpp", {"tokens": ["a"]})


def test_models_listing():
    listing = {"data": [{"id": "a", "max_model_len": 16384}, {"id": "b", "meta": {"n_vocab": 32016, "n_ctx": 4096}}]}
    assert parse_models(listing, None).context == 16384
    b = parse_models(listing, "b")
    assert (b.name, b.vocab_size, b.context) == ("b", 32016, 4096)
    with pytest.raises(WireError, match="does not serve model 'c'; it serves a, b"):
        parse_models(listing, "c")
    with pytest.raises(WireError, match="no models listed"):
        parse_models({"data": []}, None)
