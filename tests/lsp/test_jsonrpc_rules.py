"""JSON-RPC and LSP rules a hostile or broken client tests, through the real server process:
every request gets a valid answer (or, for what cannot be answered, nothing), and the
session goes on serving. One server over TCP, a fresh session (connection) per test."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from tests.lsp.helpers import SCRIPT, TcpServer
from tests.lsp.raw_client import RawConnection

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVALID_REQUEST, INVALID_PARAMS = -32600, -32602
FUNCTION = "def add(a, b):\n    \n"


def open_params(uri: str, text: str = FUNCTION, language: object = "python") -> dict:
    return {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}


def inline_params(uri: str, line: int = 1, character: int = 4) -> dict:
    return {
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 2},
    }


async def completion(conn: RawConnection, uri: str) -> list[str]:
    response = await conn.request("textDocument/inlineCompletion", inline_params(uri))
    return [item["insertText"] for item in response["result"]["items"]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(scripted_checkpoint):
    server = await TcpServer.start("--model", str(scripted_checkpoint))
    yield server
    assert await server.stop() == 0


@pytest_asyncio.fixture(loop_scope="module")
async def conn(server):
    conn = await RawConnection.tcp("127.0.0.1", server.port)
    conn.initialize_response = await conn.initialize(capabilities={"general": {"positionEncodings": ["utf-16"]}})
    await conn.wait_until_ready()
    yield conn
    await conn.close()


async def still_serves(conn: RawConnection, name: str) -> None:
    uri = f"file:///rules/{name}.py"
    await conn.notify("textDocument/didOpen", open_params(uri))
    assert await completion(conn, uri) == ["    " + SCRIPT]


async def test_a_second_initialize_is_refused_and_the_encoding_stays(conn):
    response = await conn.request(
        "initialize", {"processId": None, "capabilities": {"general": {"positionEncodings": ["utf-8"]}}}
    )
    assert response["error"]["code"] == INVALID_REQUEST
    # Still UTF-16: "é" is one unit, so character 5 is right after it on "    é".
    uri = "file:///rules/encoding.py"
    await conn.notify("textDocument/didOpen", open_params(uri, "def add(a, b):\n    é\n"))
    response = await conn.request("textDocument/inlineCompletion", inline_params(uri, 1, 5))
    assert response["result"]["items"][0]["range"]["end"] == {"line": 1, "character": 5}


async def test_a_batch_array_gets_invalid_request_with_id_null(conn):
    await conn.send_bytes(json.dumps([{"jsonrpc": "2.0", "id": 900, "method": "codellama/status"}]).encode())
    await still_serves(conn, "batch")
    [error] = [m for m in conn.unmatched if m.get("error", {}).get("message", "").startswith("batch")]
    assert error["id"] is None and error["error"]["code"] == INVALID_REQUEST


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_ids_that_are_not_numbers_get_a_valid_error(conn, literal):
    before = len(conn.unmatched)
    await conn.send_bytes(b'{"jsonrpc": "2.0", "id": %s, "method": "codellama/status"}' % literal.encode())
    await still_serves(conn, f"id_{literal.strip('-')}")
    [error] = conn.unmatched[before:]  # the reader parsed it: the answer is valid JSON
    assert error["id"] is None and error["error"]["code"] == INVALID_REQUEST


async def test_a_notification_sent_with_an_id_is_refused_not_run(conn):
    uri = "file:///rules/notified.py"
    await conn.notify("textDocument/didOpen", open_params(uri))
    response = await conn.request_raw(
        {"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}}
    )
    assert response["error"]["code"] == INVALID_REQUEST and "notification" in response["error"]["message"]
    assert await completion(conn, uri) == ["    " + SCRIPT]  # the document was not closed


@pytest.mark.parametrize("language", [1.5, None, ["python"], {"id": "python"}])
async def test_a_language_id_that_is_not_a_string_is_rejected_at_did_open(conn, language):
    uri = f"file:///rules/language_{type(language).__name__}.py"
    await conn.notify("textDocument/didOpen", open_params(uri, language=language))
    assert await completion(conn, uri) == []  # never opened
    await still_serves(conn, f"after_language_{type(language).__name__}")


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
async def test_a_nan_setting_falls_back_for_that_key_only(conn, value):
    settings = b'{"codellama": {"maxTokens": %s, "enable": false}}' % value.encode()
    body = b'{"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": %s}}'
    await conn.send_bytes(body % settings)
    await conn.wait_for_message(lambda m: "maxTokens" in m and "using the default 128" in m)
    assert (await conn.status())["state"] == "disabled"  # the rest of the update took effect


@pytest.mark.parametrize("settings", [[1, 2], "maxTokens=5", 42, True])
async def test_settings_that_are_not_an_object_say_so(conn, settings):
    await conn.notify("workspace/didChangeConfiguration", {"settings": {"codellama": settings}})
    kind = type(settings).__name__
    await conn.wait_for_message(lambda m: "settings.codellama must be an object" in m and kind in m)
    await conn.notify("workspace/didChangeConfiguration", {"settings": settings})
    await conn.wait_for_message(lambda m: "settings must be an object" in m and kind in m)
    await still_serves(conn, f"settings_{kind}")


async def test_budgets_past_the_trained_length_are_scaled_and_reported(conn):
    budgets = {"prompt": {"prefixTokens": 16384, "suffixTokens": 16384, "contextTokens": 16384}}
    await conn.notify("workspace/didChangeConfiguration", {"settings": {"codellama": budgets}})
    await conn.wait_for_message(lambda m: "49,152" in m and "trained on 1,024 positions" in m)
    await still_serves(conn, "huge_budgets")


async def test_null_settings_without_a_way_to_pull_them_say_so(conn):
    await conn.notify("workspace/didChangeConfiguration", {"settings": None})
    await conn.wait_for_message(lambda m: "sent no codellama settings" in m)


async def test_requests_after_shutdown_get_invalid_request_then_exit_ends_the_connection(conn, server):
    assert (await conn.request("shutdown"))["result"] is None
    for method, params in (
        ("codellama/status", None),
        ("textDocument/inlineCompletion", inline_params("file:///x.py")),
    ):
        response = await conn.request(method, params, timeout=10)
        assert response["error"]["code"] == INVALID_REQUEST, response
    await conn.notify("exit")
    await conn.closed_by_server()
    other = await RawConnection.tcp("127.0.0.1", server.port)  # and serves others
    await other.initialize()
    await still_serves(other, "after_exit")
    await other.close()


@pytest.mark.parametrize("classic", [False, True])
async def test_a_client_with_inline_completion_gets_only_inline_completion(server, classic):
    """VS Code, offered both, lets a slow inline answer go for its suggest widget's classic item."""
    conn = await RawConnection.tcp("127.0.0.1", server.port)
    capabilities = {"textDocument": {"inlineCompletion": {"dynamicRegistration": False}}}
    response = await conn.initialize({"classicCompletion": True} if classic else None, capabilities=capabilities)
    advertised = response["result"]["capabilities"]
    assert "inlineCompletionProvider" in advertised
    assert ("completionProvider" in advertised) == classic
    await conn.close()


async def test_a_client_without_inline_completion_gets_classic_completion(conn):
    assert "completionProvider" in conn.initialize_response["result"]["capabilities"]
