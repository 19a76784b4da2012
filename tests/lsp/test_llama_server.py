"""The backends against a real llama.cpp server, on our own GGUF export of the test checkpoints.

- greedy completions through both kinds (openai, llamacpp) equal the in-process ones on the
  same weights, at many cursor positions (a differing token is allowed only where the
  in-process logits of the two tokens tie within float noise: two engines, two kernels);
- the server received our prompt, token for token;
- cancelling stops the server's generation (its /slots show it), the time budget holds
  with a server that does not answer, a killed server gives a clear status and the
  language server keeps serving;
- typed-through, candidates and the server's prefix cache through the real language server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import torch
from lsprotocol import types

from engine.loader import load_engine
from engine.options import CompletionSettings
from engine.pipeline import Pipeline, Snapshot
from engine.remote import RemoteEngine
from engine.sampling import SamplingParams
from engine.wire import BackendConfig, BackendError
from lsp.cli import main as lsp_main
from tests.lsp.helpers import (
    SCRIPT,
    inline,
    insert,
    open_document,
    start_client,
    status,
    wait_for_state,
)
from tests.lsp.llama_server import LlamaServer, llama_server_binary

KINDS = ["openai", "llamacpp"]
SOURCE = Path(__file__).parents[2] / "engine" / "postprocess.py"
TIE = 1e-2
"""Logits closer than this may order differently in two engines' float32 arithmetic."""


def export_gguf(checkpoint: Path, out: Path) -> Path:
    assert lsp_main(["convert", "--model", str(checkpoint), "--format", "gguf", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def binary():
    return llama_server_binary()


@pytest.fixture(scope="module")
def tiny_server(binary, tiny_checkpoint, tmp_path_factory):
    server = LlamaServer(export_gguf(tiny_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny.gguf")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def looping_server(binary, looping_checkpoint, tmp_path_factory):
    server = LlamaServer(export_gguf(looping_checkpoint, tmp_path_factory.mktemp("gguf") / "looping.gguf")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    return load_engine(tiny_checkpoint, "cpu", "float32").engine


@pytest.fixture(scope="module")
def shipped_server(binary, tmp_path_factory):
    """The shipped model: trained, so its text is code (a random model's is byte-fallback soup)."""
    from engine.defaults import default_model_path

    server = LlamaServer(export_gguf(default_model_path(), tmp_path_factory.mktemp("gguf") / "shipped.gguf")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shipped():
    return load_engine(None, "cpu", "float32").engine


def generated_tokens(engine, prompt, params) -> list[int]:
    with engine.stream(prompt, params) as stream:
        for _ in stream:
            pass
    return list(stream.generated)


def margin_at_divergence(local, prompt, ours: list[int], theirs: list[int]) -> float:
    """|logit(ours[i]) - logit(theirs[i])| in process, at the first step where they differ."""
    i = next(k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    from engine.model import KVCache

    cache = KVCache(local.model.args, 1024, 1, "cpu", torch.float32)
    with torch.no_grad():
        logits = local.model(torch.tensor([prompt.tokens + ours[:i]]), 0, cache, 0, last_only=True)[0, -1]
    return float((logits[ours[i]] - logits[theirs[i]]).abs())


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_completions_equal_the_in_process_ones(shipped_server, shipped, kind):
    local = shipped
    remote = RemoteEngine(BackendConfig(shipped_server.url, kind), local.tokenizer)
    text = SOURCE.read_text(encoding="utf-8")
    settings = CompletionSettings(max_tokens=16, time_budget_ms=30_000)
    pipeline = Pipeline(local)
    exact, healed, ties = 0, 0, []
    offsets = range(300, len(text), len(text) // 30)
    for offset in offsets:
        plan = pipeline.plan(Snapshot(text, offset, "python"), settings)
        params = SamplingParams(max_new_tokens=16)
        ours, theirs = generated_tokens(local, plan.prompt, params), generated_tokens(remote, plan.prompt, params)
        healed += bool(plan.prompt.healing)
        if ours == theirs:
            exact += 1
        else:
            ties.append((offset, margin_at_divergence(local, plan.prompt, ours, theirs)))
    assert healed >= 5, "the positions should exercise token healing"
    assert all(margin < TIE for _, margin in ties), ties
    assert exact >= len(offsets) - 2, ties
    # and the edit the editor shows, through the whole pipeline
    snap = Snapshot(text, 2000, "python")
    assert Pipeline(remote).complete(snap, settings).edit == pipeline.complete(snap, settings).edit


class Recording(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.bodies.append(json.loads(request.read()))
        return super().handle_request(request)


@pytest.mark.parametrize("kind", KINDS)
def test_the_server_received_our_prompt_token_for_token(tiny_server, local, kind):
    recording = Recording()
    remote = RemoteEngine(BackendConfig(tiny_server.url, kind), local.tokenizer, transport=recording)
    text = SOURCE.read_text(encoding="utf-8")
    plan = Pipeline(local).plan(Snapshot(text, 1500, "python"), CompletionSettings(), token_healing=False)
    with remote.stream(plan.prompt, SamplingParams(max_new_tokens=4)) as stream:
        assert len(list(stream)) == 4
    [body] = recording.bodies
    assert body["prompt"] == plan.prompt.tokens
    assert stream.server_prompt_tokens == len(plan.prompt.tokens)  # counted as our ids, not re-tokenized text


def test_cancel_stops_the_servers_generation(looping_server, local):
    remote = RemoteEngine(BackendConfig(looping_server.url, "llamacpp"), local.tokenizer)
    prompt = Pipeline(remote).plan(Snapshot("def f():\n    ", 13), CompletionSettings()).prompt
    cancel = threading.Event()
    with remote.stream(prompt, SamplingParams(max_new_tokens=900), cancel=cancel) as stream:
        for _ in stream:
            if len(stream.generated) == 5:
                cancel.set()
    assert stream.stats.stop_reason == "cancelled" and len(stream.generated) == 5
    deadline = time.monotonic() + 5
    while (slot := looping_server.slots()[0])["is_processing"]:
        assert time.monotonic() < deadline, slot
        time.sleep(0.02)
    assert slot["next_token"][0]["n_decoded"] < 200  # the looping model would have gone on to 900


def read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request (headers and Content-Length body); b"" when the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class StubServer:
    """Stubs on purpose, for what no real server does: lists its model, then answers every POST
    with `answer` (raw bytes after the headers; None: never answers)."""

    def __init__(self, answer: bytes | None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.answer = answer
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.converse, args=(conn,), daemon=True).start()

    def converse(self, conn: socket.socket) -> None:
        models = json.dumps({"data": [{"id": "stub", "meta": {"n_vocab": 1000, "n_ctx": 1024}}]}).encode()
        with conn:
            while request := read_request(conn):  # one connection, kept alive: GET, then POST
                if request.startswith(b"GET /v1/models"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(models), models))  # fmt: skip
                elif request.startswith(b"POST") and self.answer is not None:
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                    try:
                        conn.sendall(head + self.answer)
                        conn.shutdown(socket.SHUT_WR)  # a clean end (FIN), not a reset
                        while conn.recv(65536):
                            pass
                    except OSError:
                        pass
                    return

    def close(self) -> None:
        self.listener.close()


def test_a_server_that_does_not_answer_ends_at_the_time_budget(local):
    stub = StubServer(None)
    try:
        remote = RemoteEngine(BackendConfig(stub.url, "openai"), local.tokenizer)
        started = time.perf_counter()
        prompt = Pipeline(remote).plan(Snapshot("x = ", 4), CompletionSettings()).prompt
        params = SamplingParams(max_new_tokens=8, time_budget_s=0.3)
        with pytest.raises(BackendError, match=r"sent no token within the 0\.3 s time budget"):
            with remote.stream(prompt, params, started=started) as stream:
                list(stream)
        assert time.perf_counter() - started < 2.0 and stream.stats.stop_reason == "time_budget"
    finally:
        stub.close()


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"data: " + b"x" * (2 << 20), "an event line ran past 1 MiB"),
        (b'data: {"tokens": [5000], "content": "x"}\n\n', "a token id outside the tokenizer's 1000"),
        (b"data: [[[[" * 5 + b"\n\n", "a malformed answer"),
        (b'data: {"tokens": [5], "timings": "soon"}\n\n', "a malformed answer"),
        (b'data: {"tokens": [5], "content": "x"}\n\n', "closed the stream before the completion ended"),
    ],
)
def test_a_broken_or_hostile_answer_is_a_clear_error(local, answer, message):
    stub = StubServer(answer)
    try:
        remote = RemoteEngine(BackendConfig(stub.url, "llamacpp"), local.tokenizer)
        with pytest.raises(BackendError, match=message):
            remote.complete("x", "", fmt="psm", params=SamplingParams(max_new_tokens=4, time_budget_s=10))
    finally:
        stub.close()


def test_urls_and_keys_that_would_leak_are_refused(local, monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "sk-1")
    with pytest.raises(BackendError, match="no user:password@"):
        RemoteEngine(BackendConfig("http://me:secret@127.0.0.1:9", "openai"), local.tokenizer)
    with pytest.raises(BackendError, match="an API key is sent only over https"):
        RemoteEngine(BackendConfig("http://10.1.2.3:8000", "openai", api_key_env="TEAM_KEY"), local.tokenizer)


def test_another_model_is_refused_with_the_reason(tiny_server, tokenizer_path, tmp_path):
    from engine.tokenizer import Tokenizer
    from tests.fixtures import train_tiny_tokenizer

    bigger = Tokenizer(train_tiny_tokenizer(tmp_path, vocab_size=1200))
    with pytest.raises(BackendError, match=r"1000 tokens, but the tokenizer .* has 1200: another model"):
        RemoteEngine(BackendConfig(tiny_server.url, "openai"), bigger)
    with pytest.raises(BackendError, match="does not serve model 'codellama-13b'"):
        RemoteEngine(BackendConfig(tiny_server.url, "openai", model="codellama-13b"), Tokenizer(tokenizer_path))


def test_the_api_key_comes_from_the_environment_and_never_shows(binary, tiny_checkpoint, tokenizer_path, tmp_path,
                                                                monkeypatch):  # fmt: skip
    from engine.tokenizer import Tokenizer

    key = "sk-team-0123456789abcdef"
    gguf = export_gguf(tiny_checkpoint, tmp_path / "tiny.gguf")
    server = LlamaServer(gguf, extra=("--api-key", key)).start()
    try:
        tok = Tokenizer(tokenizer_path)
        with pytest.raises(BackendError, match="TEAM_KEY, but that environment variable is not set"):
            RemoteEngine(BackendConfig(server.url, "openai", api_key_env="TEAM_KEY"), tok)
        monkeypatch.setenv("TEAM_KEY", "sk-wrong-key-987")
        with pytest.raises(BackendError, match="refused \\(401\\): check the API key") as refused:
            RemoteEngine(BackendConfig(server.url, "openai", api_key_env="TEAM_KEY"), tok)
        assert "sk-wrong-key-987" not in str(refused.value)
        monkeypatch.setenv("TEAM_KEY", key)
        remote = RemoteEngine(BackendConfig(server.url, "llamacpp", api_key_env="TEAM_KEY"), tok)
        assert remote.complete("def f(x):\n    ", "\n", params=SamplingParams(max_new_tokens=3)).stats.generated_tokens
    finally:
        server.stop()


# ---- through the real language server ----


@pytest.fixture(scope="module")
def scripted_gguf(binary, scripted_checkpoint, tmp_path_factory):
    return export_gguf(scripted_checkpoint, tmp_path_factory.mktemp("gguf") / "scripted.gguf")


@pytest_asyncio.fixture(loop_scope="function")
async def backend_client(scripted_gguf, scripted_checkpoint, request):
    server = LlamaServer(scripted_gguf, parallel=2).start()
    kind = getattr(request, "param", "llamacpp")
    args = ["--backend", server.url, "--backend-kind", kind, "--model", str(scripted_checkpoint)]
    client = await start_client("visual-studio-code", *args)
    await wait_for_state(client, "ready")
    client.llama_server = server
    yield client
    await client.shutdown_session()
    await client.stop()
    server.stop()


FUNCTION = "def add(a, b):\n    \n"
BODY = types.Position(1, 4)


@pytest.mark.asyncio
@pytest.mark.parametrize("backend_client", KINDS, indirect=True)
async def test_completions_typed_through_and_cache_through_the_language_server(backend_client):
    client, uri = backend_client, "file:///work/project/backend.py"
    current = await status(client)
    assert current["backend"]["url"] == client.llama_server.url and current["device"].startswith("remote")
    open_document(client, uri, FUNCTION)
    [shown] = await inline(client, uri, BODY)
    assert shown.insert_text == "    " + SCRIPT
    before = await status(client)
    insert(client, uri, BODY, "ret")
    [item] = await inline(client, uri, types.Position(1, 7))
    assert item.insert_text == shown.insert_text
    after = await status(client)
    assert (after["typedThrough"] - before["typedThrough"], after["served"] - before["served"]) == (1, 0)
    # a keystroke that is not typed-through: the server's prefix cache serves the prompt's front
    insert(client, uri, types.Position(1, 7), "x")
    await inline(client, uri, types.Position(1, 8))
    later = await status(client)
    assert later["tokensReused"] > after["tokensReused"]


@pytest.mark.asyncio
async def test_a_killed_server_gives_a_clear_status_and_the_language_server_goes_on(backend_client):
    client, uri, server = backend_client, "file:///work/project/killed.py", backend_client.llama_server
    open_document(client, uri, FUNCTION)
    assert [i.insert_text for i in await inline(client, uri, BODY)] == ["    " + SCRIPT]
    server.stop()
    insert(client, uri, BODY, "# ")
    assert await inline(client, uri, types.Position(1, 6)) == []
    current = await status(client)
    assert current["failed"] == 1 and server.url in current["lastError"] and current["state"] == "ready"
    server.start()  # back on the same port: completions resume, the error clears
    insert(client, uri, types.Position(1, 6), "\n    ")
    await asyncio.sleep(0)
    items = await inline(client, uri, types.Position(2, 4))
    assert [i.insert_text for i in items] == ["    " + SCRIPT]
    assert (await status(client))["lastError"] is None


@pytest.mark.asyncio
async def test_candidates_through_the_backend(tiny_server, tiny_checkpoint):
    args = ["--backend", tiny_server.url, "--backend-kind", "openai", "--model", str(tiny_checkpoint)]
    client = await start_client("visual-studio-code", *args, options={"maxTokens": 6, "multiline": "never"})
    try:
        await wait_for_state(client, "ready")
        uri = "file:///work/project/candidates.py"
        open_document(client, uri, "def add(a, b):\n    return \n")
        at = types.Position(1, 11)
        typing = await inline(client, uri, at)
        asked = await inline(client, uri, at, types.InlineCompletionTriggerKind.Invoked)
        texts = [item.insert_text for item in asked]
        assert 2 <= len(texts) <= 3 and len(set(texts)) == len(texts)
        assert [item.insert_text for item in typing] == texts[:1]
    finally:
        await client.shutdown_session()
        await client.stop()
