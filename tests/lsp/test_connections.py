"""Connections end cleanly and only themselves: stdio frames of any size, the end of input in
the middle of a generation, TCP clients that vanish, misbehave, or try to read each other's
documents. All through the real server process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from tests.lsp.helpers import SCRIPT, TcpServer, server_command
from tests.lsp.raw_client import RawConnection

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVER_NOT_INITIALIZED, INVALID_REQUEST = -32002, -32600
FUNCTION = "def add(a, b):\n    \n"
LONG_GENERATION = {"maxTokens": 2048, "timeBudgetMs": 60000, "multiline": "always", "maxLines": 500}


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def inline_params(uri: str) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 2}}


async def open_function(conn: RawConnection, uri: str) -> None:
    document = {"uri": uri, "languageId": "python", "version": 1, "text": FUNCTION}
    await conn.notify("textDocument/didOpen", {"textDocument": document})


async def completion(conn: RawConnection, uri: str) -> list[str]:
    response = await conn.request("textDocument/inlineCompletion", inline_params(uri))
    return [item["insertText"] for item in response["result"]["items"]]


async def wait_for_generating(conn: RawConnection, wanted: bool, problem: str) -> None:
    for _ in range(300):
        if (await conn.status())["generating"] == wanted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(problem)


async def stdio_server(checkpoint: Path, options: dict | None = None) -> RawConnection:
    conn = await RawConnection.stdio(*server_command("--model", str(checkpoint)), stderr=True)
    await conn.initialize(options)
    await conn.wait_until_ready()
    return conn


# ---- stdio ----


async def test_an_oversized_frame_is_answered_and_skipped_in_bounded_memory(scripted_checkpoint):
    conn = await stdio_server(scripted_checkpoint)
    pid = conn.process.pid
    peak_before = memory_kb(pid, "VmHWM")
    size = 80 * 2**20  # over the 64 MiB limit, sent for real
    conn.writer.write(b"Content-Length: %d\r\n\r\n" % size)
    chunk = b" " * 2**20
    for _ in range(size // len(chunk)):
        conn.writer.write(chunk)
        await conn.writer.drain()
    uri = "file:///conn/after_oversized.py"
    await open_function(conn, uri)
    assert await completion(conn, uri) == ["    " + SCRIPT]
    [error] = [m for m in conn.unmatched if "limit" in m.get("error", {}).get("message", "")]
    assert error["id"] is None and error["error"]["code"] == INVALID_REQUEST
    assert memory_kb(pid, "VmHWM") - peak_before < 32 * 1024  # never held the 80 MiB
    await conn.request("shutdown")
    await conn.notify("exit")
    assert await conn.process.wait() == 0


async def test_a_terabyte_frame_then_end_of_input_is_a_clean_exit(scripted_checkpoint):
    conn = await stdio_server(scripted_checkpoint)
    conn.writer.write(b"Content-Length: 1000000000000\r\n\r\n" + b"{" * 100_000)
    await conn.writer.drain()
    conn.writer.close()
    assert await asyncio.wait_for(conn.process.wait(), 30) == 0
    stderr = (await conn.process.stderr.read()).decode()
    assert "MemoryError" not in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("attempt", range(3))
async def test_end_of_input_while_generating_is_a_clean_exit(looping_checkpoint, attempt):
    conn = await stdio_server(looping_checkpoint, LONG_GENERATION)
    uri = f"file:///conn/eof_{attempt}.py"
    await open_function(conn, uri)
    pending = asyncio.ensure_future(conn.request("textDocument/inlineCompletion", inline_params(uri)))
    await wait_for_generating(conn, True, "the generation never started")
    conn.writer.close()
    assert await asyncio.wait_for(conn.process.wait(), 30) == 0
    pending.cancel()
    stderr = (await conn.process.stderr.read()).decode()
    assert "terminate called" not in stderr and "Fatal Python error" not in stderr, stderr


# ---- TCP: one session per connection ----


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tcp(looping_checkpoint):
    server = await TcpServer.start("--model", str(looping_checkpoint))
    yield server
    assert await server.stop() == 0


async def tcp_client(server: TcpServer, options: dict | None = None) -> RawConnection:
    conn = await RawConnection.tcp("127.0.0.1", server.port)
    await conn.initialize(options or {"maxTokens": 8})
    await conn.wait_until_ready()
    return conn


async def test_clients_that_connect_and_close_or_send_garbage_end_only_themselves(tcp):
    for garbage in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\xff" * 5000, b"Content-Length: 99\r\n\r\n{"):
        _, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
        writer.write(garbage)
        await writer.drain()
        writer.close()
    conn = await tcp_client(tcp)
    uri = "file:///tcp/after_garbage.py"
    await open_function(conn, uri)
    assert (await completion(conn, uri))[0].startswith("    " + SCRIPT)
    await conn.close()
    assert tcp.process.returncode is None


async def test_a_disconnect_mid_request_stops_its_generation_and_nothing_else(tcp):
    leaving = await tcp_client(tcp, LONG_GENERATION)
    uri = "file:///tcp/leaving.py"
    await open_function(leaving, uri)
    pending = asyncio.ensure_future(leaving.request("textDocument/inlineCompletion", inline_params(uri)))
    watcher = await tcp_client(tcp)
    await wait_for_generating(watcher, True, "the generation never started")
    leaving.writer.close()
    pending.cancel()
    # Its generation is cancelled, not left to run for a minute.
    await wait_for_generating(watcher, False, "the departed client's generation kept running")
    mine = "file:///tcp/watcher.py"
    await open_function(watcher, mine)
    assert (await completion(watcher, mine))[0].startswith("    " + SCRIPT)
    await watcher.close()


async def test_one_connection_never_sees_another_ones_documents_or_answers(tcp):
    owner = await tcp_client(tcp)
    secret = "file:///tcp/secret.py"
    await open_function(owner, secret)
    assert await completion(owner, secret)  # the owner's session has it

    intruder = await RawConnection.tcp("127.0.0.1", tcp.port)
    early = await intruder.request("textDocument/inlineCompletion", inline_params(secret))
    assert early["error"]["code"] == SERVER_NOT_INITIALIZED
    await intruder.initialize()
    assert await completion(intruder, secret) == []  # not open in this session
    assert (await intruder.status())["requests"] == 1  # its own counters

    # The owner's answers still come to the owner, not to the newer connection.
    owner_answers = len(owner._responses)
    assert await completion(owner, secret)
    assert len(owner._responses) == owner_answers
    assert not [m for m in intruder.unmatched if "result" in m]
    await intruder.close()
    await owner.close()


async def test_model_settings_of_a_shared_server_belong_to_its_command_line(tcp):
    conn = await tcp_client(tcp, {"model": "/somewhere/else", "maxTokens": 8})
    await conn.wait_for_message(lambda m: "shared over TCP" in m and "model" in m)
    assert (await conn.status())["state"] == "ready"  # nothing reloaded
    await conn.close()
