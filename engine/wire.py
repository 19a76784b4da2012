"""The two HTTP dialects a shared inference server speaks, as plain data (no I/O here).

- "openai": POST /v1/completions, the OpenAI completions API with a prompt of token ids.
  vLLM, SGLang and llama.cpp's server accept it. Generated token ids come back in
  `logprobs`: llama.cpp puts them in `logprobs.content[].id`, vLLM (with
  `return_tokens_as_token_ids`) in `logprobs.tokens` as "token_id:N".
- "llamacpp": POST /completion, llama.cpp's own API: token-id prompt, `cache_prompt`,
  generated ids in `tokens` (`return_tokens`), prompt tokens reused in `timings.cache_n`.

Both stream Server-Sent Events ("data: {...}" lines). We never send text to tokenize: the
prompt is the exact PSM/SPM token layout engine.prompts builds, so the server sees what
Meta's reference would feed the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.options import BACKEND_KINDS, BackendKind
from engine.sampling import SamplingParams

__all__ = [
    "BACKEND_KINDS",
    "BackendConfig",
    "BackendError",
    "BackendKind",
    "Chunk",
    "WireError",
    "completion_body",
    "parse_event",
    "parse_models",
]
HEALING_BIAS = 100.0
"""The largest logit bias the OpenAI API allows: it puts the allowed tokens above every other."""


class BackendError(RuntimeError):
    """The server is unreachable, refused the request, or serves something else; the message
    names the URL and what to do."""


@dataclass(frozen=True)
class BackendConfig:
    url: str
    kind: BackendKind = "openai"
    api_key_env: str | None = None
    """The environment variable holding the API key (never the key itself)."""
    model: str | None = None
    """The served model's name (vLLM: the path or --served-model-name); None: the first listed."""

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(f"backend.apiKeyEnv names {self.api_key_env}, but that environment variable is not set")
        return key


class WireError(ValueError):
    """A response that does not follow the dialect (names what is wrong)."""


@dataclass
class Chunk:
    """What one streamed event (or a whole answer) carries."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    """The server's own decoding of those tokens (used only when it sends no token ids)."""
    sent_bytes: bytes | None = None
    """llama.cpp: the raw bytes of the text this event sends (its `bytes`, not lossy like `text`)."""
    finish_reason: str | None = None
    """None while generating; "stop" (EOS/EOT or a stop string), "length", ..."""
    cached_tokens: int | None = None
    """Prompt tokens the server's prefix cache served (last event only)."""
    prompt_tokens: int | None = None
    """The prompt's length as the server counted it."""


def completion_path(kind: BackendKind) -> str:
    return "/v1/completions" if kind == "openai" else "/completion"


def completion_body(
    kind: BackendKind,
    prompt: list[int],
    max_tokens: int,
    sampling: SamplingParams,
    *,
    logit_bias: dict[int, float] | None = None,
    model: str | None = None,
    stream: bool = True,
    stop_ids: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The request body: sampling as ours (temperature, top_p and seed from `sampling`; greedy
    at 0; no top-k, min-p or penalties). max_tokens is the request's own limit."""
    temperature, top_p, seed = sampling.temperature, sampling.top_p, sampling.seed
    body: dict[str, Any] = {
        "prompt": prompt,
        "temperature": temperature,
        "top_p": top_p if temperature > 0 else 1.0,
        "stream": stream,
        "timings_per_token": True,  # llama.cpp: the prompt tokens its cache served, in every event
    }
    if seed is not None:
        body["seed"] = seed
    if kind == "openai":
        body |= {
            "max_tokens": max_tokens,
            "logprobs": 1,  # the token ids ride on the log-probabilities
            "return_tokens_as_token_ids": True,  # vLLM: logprobs.tokens as "token_id:N"
            "skip_special_tokens": False,  # vLLM: keep <EOT> visible, we stop on it ourselves
            "min_p": 0.0,
            "top_k": -1 if temperature > 0 else 1,  # vLLM's and llama.cpp's "no top-k" / greedy
        }
        if stop_ids:  # vLLM: <EOT> ends the request there too (llama.cpp knows it from the GGUF)
            body["stop_token_ids"] = list(stop_ids)
        if stream:  # vLLM: usage (cached prompt tokens) in every event, as we may stop reading early
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        if model:
            body["model"] = model
        if logit_bias:
            body["logit_bias"] = {str(t): b for t, b in logit_bias.items()}
    else:
        body |= {
            "n_predict": max_tokens,
            "cache_prompt": True,
            "return_tokens": True,
            "n_probs": 1,  # for `bytes`: the exact bytes of each event's text
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "samplers": ["temperature", "top_p"],  # as in process: scale, then the nucleus
        }
        if logit_bias:
            body["logit_bias"] = [[t, b if b != float("-inf") else False] for t, b in logit_bias.items()]
    return body


def parse_event(kind: BackendKind, event: Any) -> Chunk:
    """One streamed JSON event (or a non-streamed answer) -> Chunk."""
    if not isinstance(event, dict):
        raise WireError(f"expected a JSON object, got {type(event).__name__}")
    if "error" in event:
        error = event["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise WireError(f"the server reported an error: {message}")
    if kind == "llamacpp":
        tokens = event.get("tokens") or []
        timings = event.get("timings") or {}
        stop = event.get("stop") is True
        reason = event.get("stop_type") if stop else None
        probs = event.get("completion_probabilities")
        return Chunk(
            tokens=check_ids(tokens, "tokens"),
            text=str(event.get("content") or ""),
            sent_bytes=sent_bytes(probs),
            finish_reason=(reason or "stop") if stop else None,
            cached_tokens=timings.get("cache_n"),
            prompt_tokens=event.get("tokens_evaluated"),
        )
    usage = event.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    timings = event.get("timings") or {}
    cached = details.get("cached_tokens", timings.get("cache_n"))
    prompt_tokens = usage.get("prompt_tokens")
    if prompt_tokens is None and "prompt_n" in timings:  # llama.cpp, timings_per_token
        prompt_tokens = timings["prompt_n"] + timings.get("cache_n", 0)
    chunk = Chunk(cached_tokens=cached, prompt_tokens=prompt_tokens)
    choices = event.get("choices") or []
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise WireError("choices[0] is not an object")
        chunk.text = str(choice.get("text") or "")
        chunk.finish_reason = choice.get("finish_reason")
        logprobs = choice.get("logprobs")
        chunk.tokens = openai_token_ids(logprobs)
        if isinstance(logprobs, dict):
            chunk.sent_bytes = sent_bytes(logprobs.get("content"))
    return chunk


def sent_bytes(entries: Any) -> bytes | None:
    """llama.cpp's per-token `bytes` (a list of ints) of a one-token event, if present."""
    if not (isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict)):
        return None
    values = entries[0].get("bytes")
    if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v < 256 for v in values):
        return None
    return bytes(values)


def openai_token_ids(logprobs: Any) -> list[int]:
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):  # llama.cpp
        return check_ids([entry.get("id") for entry in logprobs["content"] if isinstance(entry, dict)], "logprobs")
    ids = []
    for token in logprobs.get("tokens") or []:  # vLLM, return_tokens_as_token_ids
        if not (isinstance(token, str) and token.startswith("token_id:")):
            raise WireError(f"logprobs.tokens holds {token!r}, not 'token_id:N': is this vLLM?")
        ids.append(int(token.removeprefix("token_id:")))
    return ids


def check_ids(values: Any, where: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise WireError(f"{where}: expected a list of token ids")
    return values


@dataclass
class ServedModel:
    """What the server says it serves."""

    name: str
    vocab_size: int | None = None
    context: int | None = None
    """Positions one request may use (llama.cpp: a slot's n_ctx; vLLM: max_model_len)."""
    trained_length: int | None = None


def parse_models(answer: Any, wanted: str | None) -> ServedModel:
    """GET /v1/models (both servers have it) -> the model to use: `wanted`, or the only/first one."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not data or not all(isinstance(m, dict) for m in data):
        raise WireError("GET /v1/models: no models listed")
    names = [str(m.get("id")) for m in data]
    if wanted is not None and wanted not in names:
        raise WireError(f"the server does not serve model {wanted!r}; it serves {', '.join(names)}")
    entry = data[names.index(wanted)] if wanted is not None else data[0]
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}

    def number(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    return ServedModel(
        name=str(entry.get("id")),
        vocab_size=number(meta.get("n_vocab")),
        context=number(meta.get("n_ctx")) or number(entry.get("max_model_len")),
        trained_length=number(meta.get("n_ctx_train")) or number(entry.get("max_model_len")),
    )
