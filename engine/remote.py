"""A shared inference server as the pipeline's backend (vLLM, SGLang, llama.cpp's server).

The tokenizer stays here: prompts go out as Code Llama's exact infilling token ids and the
answer's token ids are decoded as in process (engine.middle_text), so post-processing,
stop strings and typed-through behave the same. What the server adds is its own KV cache:
llama.cpp's `cache_prompt` and vLLM's prefix caching serve the unchanged front of the
prompt, and the number they report is what `codellama/status` shows as reused.

Token healing: the first generated tokens must spell the characters the prompt backed up
over. Each such token is one request for a single token with a logit bias that lifts the
allowed tokens above all others (or bans the rest, whichever list is shorter); then one
streamed request continues from the healed prompt. A server that ignores the bias is
caught (the token it returns is not allowed): `can_heal` turns false and SPM prompts go
out as PSM, which needs no healing.

Stopping: the stream is read on the inference thread; a watcher thread shuts the socket
down when the request is cancelled or its deadline passes, so a server busy with a long
prefill is told at once (llama.cpp and vLLM abort a request whose client went away).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Generator, Hashable, Iterator
from urllib.parse import urlsplit

import httpx

from engine.backend import Backend, PromptTooLong
from engine.healing import HealingConstraint
from engine.middle_text import MiddleText
from engine.prompts import InfillPrompt
from engine.sampling import GenerationStats, SamplingParams
from engine.tokenizer import Tokenizer
from engine.wire import (
    HEALING_BIAS,
    BackendConfig,
    BackendError,
    Chunk,
    ServedModel,
    WireError,
    completion_body,
    completion_path,
    parse_event,
    parse_models,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
"""Longest silence inside a request before it fails (the time budget usually ends it first)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WATCH_INTERVAL_S = 0.01
UTF8_SLACK = 3
"""Tokens asked for beyond ours (see RemoteStream._generate); we stop at our own limit."""


def redacted(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class RemoteEngine(Backend):
    """Completions from a remote server; one request at a time per engine, like InfillEngine."""

    def __init__(self, config: BackendConfig, tokenizer: Tokenizer, transport: httpx.BaseTransport | None = None):
        tokenizer.require_infilling()
        if not config.url.startswith(("http://", "https://")):
            raise BackendError(f"backend URL {config.url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.config = config
        self.tokenizer = tokenizer
        self._key = config.api_key()
        host = urlsplit(config.url)
        if host.username or host.password:
            raise BackendError("backend URL: no user:password@ in it (it would show in logs); use apiKeyEnv")
        if self._key and host.scheme == "http" and host.hostname not in LOOPBACK:
            raise BackendError(
                f"{config.url}: an API key is sent only over https (or to this machine): use https://, or a tunnel"
            )
        self._transport = transport
        self._socket: socket.socket | None = None
        """The one connection's socket (the pool keeps one), recorded when it connects."""
        self._broken = False
        self.client = self._new_client()
        try:
            self.served: ServedModel = self.describe_server()
        except BaseException:
            self.client.close()
            raise
        self.can_heal = True

    def _new_client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        # One connection, so that the socket to shut down on cancel is the one in use; https
        # certificates verified (SSL_CERT_FILE may name a private CA); no proxy from the
        # environment: prompts go only where the settings say.
        transport = self._transport or httpx.HTTPTransport(
            verify=True, trust_env=False, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        )
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return httpx.Client(
            base_url=self.config.url.rstrip("/"), headers=headers, timeout=timeout, transport=transport,
            trust_env=False, follow_redirects=False,
        )  # fmt: skip

    def _trace(self, event: str, info: dict) -> None:
        """httpcore's trace hook: remember the socket of each new connection."""
        # the TCP socket, then (https) the TLS socket that wraps and replaces it
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self._socket = sock

    def _shut_down_when(self, stop: Callable[[], bool], done: threading.Event) -> None:
        """Until the request is done: once stop() turns true, shut its socket down, so a read
        blocked on the headers or the next event returns at once and the server sees its
        client leave (llama.cpp and vLLM then abort the generation)."""
        shut: socket.socket | None = None
        while not done.wait(WATCH_INTERVAL_S):
            # keep watching: a stop while connecting finds the socket once it exists
            if stop() and self._socket is not None and self._socket is not shut:
                self._broken = True  # the pooled connection is dead: the next request makes a new client
                shut = self._socket
                try:
                    shut.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # ---- what the server serves ----

    def describe_server(self) -> ServedModel:
        """GET /v1/models: reachable, the model we want, the vocabulary our tokenizer has."""
        try:
            served = parse_models(self._get_json("/v1/models"), self.config.model)
        except WireError as e:
            raise BackendError(f"{self.config.url}: {e}") from e
        vocab = served.vocab_size
        if vocab is not None and vocab < self.tokenizer.vocab_size:
            raise BackendError(
                f"{self.config.url} serves {served.name} with {vocab} tokens, but the tokenizer "
                f"{self.tokenizer.path} has {self.tokenizer.vocab_size}: another model? Serve the checkpoint whose "
                "tokenizer.model this is (codellama-lsp convert --format gguf|hf)"
            )
        return served

    @property
    def max_seq_len(self) -> int:
        return self.served.context or self.trained_length

    @property
    def trained_length(self) -> int:
        return self.served.trained_length or self.served.context or 4096

    def describe(self) -> str:
        return f"{self.served.name} at {self.config.url} ({self.config.kind}), {self.max_seq_len} positions per request"

    def _get_json(self, path: str) -> object:
        try:
            with self.client.stream("GET", path, extensions={"trace": self._trace}) as response:
                body = bounded_body(response, MAX_EVENT_BYTES)
        except (httpx.HTTPError, WireError) as e:
            raise BackendError(f"{self.config.url}: unreachable ({self._say(e)})") from e
        if response.status_code >= 400:
            self._refused(response.status_code, body.decode("utf-8", "replace"), f"GET {path}")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            raise BackendError(f"{self.config.url}: GET {path} did not answer JSON ({self._say(e)})") from e

    def _refused(self, status: int, message: str, what: str) -> None:
        if status in (401, 403):
            raise BackendError(f"{self.config.url}: {what} was refused ({status}): check the API key")
        raise BackendError(f"{self.config.url}: {what} failed ({status}: {self._say(message)})")

    def _say(self, error: object) -> str:
        return redacted(str(error), self._key)[:300]

    # ---- completions ----

    def open_stream(
        self, prompt: InfillPrompt, params: SamplingParams, session: Hashable | None, cancel: Callable[[], bool],
        started: float,
    ) -> RemoteStream:  # fmt: skip
        return RemoteStream(self, prompt, params, cancel, started)  # the server keeps its own cache: no session

    def events(self, body: dict, stop: Callable[[], bool]) -> Iterator[Chunk]:
        """POST one completion request; yield its events (streamed, or the one answer) until the
        server ends it. Ends early, without error, once stop() turns true."""
        path = completion_path(self.config.kind)
        if self._broken:
            self.client.close()
            self.client, self._broken = self._new_client(), False
        done = threading.Event()
        watcher = threading.Thread(target=self._shut_down_when, args=(stop, done), daemon=True)
        watcher.start()
        try:
            with self.client.stream("POST", path, json=body, extensions={"trace": self._trace}) as response:
                if response.status_code >= 400:
                    message = bounded_body(response).decode("utf-8", "replace")
                    self._refused(response.status_code, message, f"POST {path}")
                if not body.get("stream"):
                    yield self._parse(bounded_body(response), path)
                    return
                for line in bounded_lines(response):
                    if not line.startswith(b"data:"):
                        continue  # SSE comments (pings), event names, blank separators
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    yield self._parse(data, path)
        except (httpx.HTTPError, WireError) as e:
            if stop():
                return  # we shut it down
            raise BackendError(f"{self.config.url}: POST {path} failed ({self._say(e)})") from e
        finally:
            done.set()
            watcher.join()  # never alive into the next request, whose socket it could shut

    def _parse(self, data: bytes, path: str) -> Chunk:
        """One event; anything a hostile or broken server sends becomes a BackendError."""
        try:
            return parse_event(self.config.kind, json.loads(data))
        except (WireError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as e:
            raise BackendError(f"{self.config.url}: POST {path}: a malformed answer ({self._say(e)})") from e

    def close(self) -> None:
        self.client.close()


MAX_EVENT_BYTES = 1 << 20
MAX_ANSWER_BYTES = 64 << 20
"""A server that sends more than this, in one event or in all, is broken or hostile."""


def bounded_lines(response: httpx.Response) -> Iterator[bytes]:
    """The response's lines, never holding a line over MAX_EVENT_BYTES or reading over MAX_ANSWER_BYTES."""
    buffer, total = b"", 0
    for data in response.iter_bytes():
        total += len(data)
        if total > MAX_ANSWER_BYTES:
            raise WireError(f"the answer ran past {MAX_ANSWER_BYTES >> 20} MiB")
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        yield from (line.rstrip(b"\r") for line in lines)
        if len(buffer) > MAX_EVENT_BYTES:
            raise WireError(f"an event line ran past {MAX_EVENT_BYTES >> 20} MiB")
    if buffer:
        yield buffer


def bounded_body(response: httpx.Response, limit: int = MAX_ANSWER_BYTES) -> bytes:
    body = b""
    for data in response.iter_bytes():
        body += data
        if len(body) > limit:
            raise WireError(f"the answer ran past {limit >> 20} MiB")
    return body


class RemoteStream:
    """One completion from the server, with the interface of engine.session.Stream."""

    def __init__(
        self,
        engine: RemoteEngine,
        prompt: InfillPrompt,
        params: SamplingParams,
        cancel: Callable[[], bool],
        started: float,
    ) -> None:
        self.engine, self.prompt, self.params, self.cancel = engine, prompt, params, cancel
        self.deadline = started + params.time_budget_s if params.time_budget_s is not None else math.inf
        tok = engine.tokenizer
        self.middle = MiddleText(tok, prompt.healing, params.stop)
        self.stats = GenerationStats(prompt_tokens=len(prompt.tokens))
        self.generated: list[int] = []
        self._asked: str | None = None
        self._run: Generator[str, None, None] | None = None
        self._request = 0
        self._generated_at_request = 0
        self._prefilled: dict[int, int] = {}
        self.server_prompt_tokens: int | None = None
        """The last request's prompt length as the server counted it (ours, if it took our ids)."""
        self._stop_ids = {t for t in (tok.eot_id, tok.eos_id) if t is not None and t >= 0}

    @property
    def text(self) -> str:
        return self.middle.text

    def stop(self, reason: str) -> None:
        self._asked = self._asked or reason

    def __enter__(self) -> RemoteStream:
        if len(self.prompt.tokens) >= self.engine.max_seq_len:
            raise PromptTooLong(
                f"the prompt has {len(self.prompt.tokens)} tokens but the server takes {self.engine.max_seq_len} "
                "per request: lower the prompt budget"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._run is not None:
            self._run.close()  # a caller that broke out: close the HTTP stream now, not at GC
        if not self.stats.stop_reason:
            self.stats.stop_reason = self._asked or "cancelled"
        self.stats.generated_tokens = len(self.generated)

    def _should_stop(self) -> bool:
        return bool(self._asked) or self.cancel() or time.perf_counter() >= self.deadline

    def _why_stopped(self) -> str:
        return self._asked or ("cancelled" if self.cancel() else "time_budget")

    def __iter__(self) -> Iterator[str]:
        if self._run is None:
            self._run = self._generate()
        return self._run

    def _generate(self) -> Generator[str, None, None]:
        t0 = time.perf_counter()
        first = True
        try:
            constraint = HealingConstraint(self.engine.tokenizer, self.prompt.healing) if self.prompt.healing else None
            while constraint is not None and constraint.active:
                allowed = constraint.allowed()
                if not allowed:
                    break
                token = self._one_healing_token(allowed)
                if first:
                    self.stats.prefill_s, first = time.perf_counter() - t0, False
                if token is None:
                    self._fail_if_silent()
                    return
                constraint.advance(token)
                yield self._take(token)
                if self._done():
                    return
            # + UTF8_SLACK: llama.cpp sends a token that leaves a character incomplete only with
            # the one completing it, so the last of ours may need up to three more from it
            remaining = self.params.max_new_tokens - len(self.generated)
            room = self.engine.max_seq_len - len(self.prompt.tokens) - len(self.generated)
            body = self._body(max(1, min(remaining + UTF8_SLACK, room)), None, stream=True)
            self._new_request()
            for chunk in self.engine.events(body, self._should_stop):
                self._account(chunk)
                for token in self._tokens_of(chunk):
                    if first:
                        self.stats.prefill_s, first = time.perf_counter() - t0, False
                    if token in self._stop_ids:
                        self.stats.stop_reason = "eot" if token == self.engine.tokenizer.eot_id else "eos"
                        return
                    yield self._take(token)
                    if self._done():
                        return
                if chunk.finish_reason is not None:
                    self.stats.stop_reason = "max_tokens" if chunk.finish_reason in ("length", "limit") else "eot"
                    return
            if not self._should_stop():
                raise BackendError(f"{self.engine.config.url} closed the stream before the completion ended")
            self.stats.stop_reason = self._why_stopped()
            self._fail_if_silent()
        finally:
            self.stats.decode_s = time.perf_counter() - t0 - self.stats.prefill_s

    def _fail_if_silent(self) -> None:
        """A time budget that ran out before the server sent anything is the server's problem
        (overloaded, or a prefill it cannot do in time): say so, rather than show nothing."""
        if self.stats.stop_reason == "time_budget" and not self.generated:
            budget = self.params.time_budget_s or 0.0
            raise BackendError(
                f"{self.engine.config.url} sent no token within the {budget:.1f} s time budget "
                f"(prompt {len(self.prompt.tokens)} tokens): is it overloaded? (timeBudgetMs raises the budget)"
            )

    def _body(self, max_tokens: int, logit_bias: dict[int, float] | None, stream: bool) -> dict:
        tokens = self.prompt.tokens + self.generated
        c = self.engine.config
        return completion_body(
            c.kind, tokens, max_tokens, self.params, logit_bias=logit_bias, model=c.model, stream=stream,
            stop_ids=tuple(sorted(self._stop_ids)),
        )  # fmt: skip

    def _one_healing_token(self, allowed: list[int]) -> int | None:
        """One constrained token (None: the request was stopped, or the server ended it)."""
        vocab = self.engine.tokenizer.vocab_size
        if len(allowed) <= vocab // 2:
            bias = {t: HEALING_BIAS for t in allowed}
        else:  # most tokens are allowed: ban the others instead
            ok = set(allowed)
            ban = -math.inf if self.engine.config.kind == "llamacpp" else -HEALING_BIAS
            bias = {t: ban for t in range(vocab) if t not in ok}
        # Not streamed: a byte-fallback token that leaves a character incomplete is never sent
        # as an event by llama.cpp; a whole answer always carries every token id.
        self._new_request()
        for chunk in self.engine.events(self._body(1, bias, stream=False), self._should_stop):
            self._account(chunk)
            tokens = self._tokens_of(chunk)
            if tokens:
                if tokens[0] not in set(allowed):
                    self.engine.can_heal = False
                    raise BackendError(
                        f"{self.engine.config.url} ignored the logit bias that token healing needs; "
                        "further SPM prompts go out as PSM"
                    )
                return tokens[0]
        self.stats.stop_reason = self._why_stopped() if self._should_stop() else "eot"
        return None

    def _tokens_of(self, chunk: Chunk) -> list[int]:
        """The token ids an event stands for.

        llama.cpp holds back a token that leaves the text with an incomplete UTF-8 character
        (a byte-fallback token) and sends it later inside the next event's text, with only that
        event's own token id; its `bytes` (exact, unlike the text, which has U+FFFD for a bad
        sequence) give the held bytes, recovered as their byte tokens. A server that
        sends no ids at all gets our tokenization of its text (rarely identical)."""
        tok = self.engine.tokenizer
        if any(not 0 <= t < tok.vocab_size for t in chunk.tokens):
            raise BackendError(f"{self.engine.config.url} sent a token id outside the tokenizer's {tok.vocab_size}")
        if not chunk.tokens:
            return tok.encode_infilling(chunk.text) if chunk.text else []
        if len(chunk.tokens) != 1 or not chunk.sent_bytes:
            return chunk.tokens
        sent, own = chunk.sent_bytes, tok.token_bytes[chunk.tokens[0]]
        if len(sent) <= len(own) or not sent.endswith(own):
            return chunk.tokens
        held = [tok.byte_token(b) for b in sent[: len(sent) - len(own)]]
        return chunk.tokens if None in held else [*held, chunk.tokens[0]]  # type: ignore[list-item]

    def _take(self, token: int) -> str:
        self.generated.append(token)
        piece = self.middle.add(token)
        if self.middle.stopped:
            self._asked = "stop_string"
        return piece

    def _done(self) -> bool:
        if self._asked:
            return True
        if len(self.generated) >= self.params.max_new_tokens:
            self._asked = "max_tokens"
        elif time.perf_counter() >= self.deadline:
            self._asked = "time_budget"
        elif self.cancel():
            self._asked = "cancelled"
        return bool(self._asked)

    def _account(self, chunk: Chunk) -> None:
        """What the server's prefix cache served: of the first request's prompt (ours), reused;
        what each request had to prefill (a healing request's prompt, then the prompt plus the
        healed tokens), prefilled."""
        if chunk.prompt_tokens is not None:
            self.server_prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is None:
            return
        sent = len(self.prompt.tokens) + self._generated_at_request
        cached = min(chunk.cached_tokens, sent)
        if self._request == 1:
            self.stats.reused_tokens = cached
        self._prefilled[self._request] = sent - cached
        self.stats.prefilled_tokens = sum(self._prefilled.values())

    def _new_request(self) -> None:
        self._request += 1
        self._generated_at_request = len(self.generated)
