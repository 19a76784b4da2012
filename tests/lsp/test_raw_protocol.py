"""What no proper client sends, through a raw JSON-RPC connection: a server started with a
bad model path, requests before `initialize`, malformed params and broken JSON. The
server answers each with the LSP error (or ignores what cannot be answered) and goes on
serving."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from lsprotocol.converters import get_converter
from pytest_lsp import client_capabilities

from tests.lsp.helpers import CLIENTS, SCRIPT, server_command
from tests.lsp.raw_client import RawConnection

pytestmark = pytest.mark.asyncio(loop_scope="module")

MISSING_MODEL = "/nonexistent/codellama-7b"
URI = "file:///work/project/raw.py"
FUNCTION = "def add(a, b):\n    \n"

SERVER_NOT_INITIALIZED, INVALID_PARAMS, METHOD_NOT_FOUND = -32002, -32602, -32601


async def state(conn: RawConnection) -> dict:
    return (await conn.request("codellama/status"))["result"]


async def wait_for(conn: RawConnection, predicate, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while not predicate(current := await state(conn)):
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.1)
    return current


def inline_request(line: int = 1, character: int = 4, uri: str = URI) -> dict:
    return {
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 2},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=CLIENTS)
async def conn(request):
    """A server started with a model path that does not exist, and asked things before `initialize`."""
    conn = await RawConnection.stdio(*server_command("--model", MISSING_MODEL))
    conn.before_initialize = await conn.request("textDocument/inlineCompletion", inline_request())
    await conn.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                                "text": "dropped"}})  # fmt: skip
    capabilities = get_converter().unstructure(client_capabilities(request.param))
    conn.initialize = await conn.request("initialize", {"processId": None, "capabilities": capabilities})
    await conn.notify("initialized", {})
    yield conn
    await conn.request("shutdown")
    await conn.notify("exit")
    await conn.close()


async def use_good_model(conn: RawConnection, checkpoint) -> None:
    await conn.notify("workspace/didChangeConfiguration", {"settings": {"codellama": {"model": str(checkpoint)}}})
    await wait_for(conn, lambda s: s["state"] == "ready" and s["model"] == str(checkpoint))


async def completes_normally(conn: RawConnection) -> None:
    await conn.notify(
        "textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": FUNCTION}}
    )
    response = await conn.request("textDocument/inlineCompletion", inline_request())
    assert response["result"]["items"][0]["insertText"] == "    " + SCRIPT


async def test_requests_before_initialize_get_server_not_initialized(conn):
    assert conn.before_initialize["error"]["code"] == SERVER_NOT_INITIALIZED
    assert "result" in conn.initialize and conn.initialize["result"]["capabilities"]["inlineCompletionProvider"] == {}


async def test_bad_model_path_is_reported_and_the_server_stays_up(conn, scripted_checkpoint):
    current = await wait_for(conn, lambda s: s["state"] == "error")
    assert MISSING_MODEL in current["message"]
    shown = [n["params"]["message"] for n in conn.notifications if n["method"] == "window/showMessage"]
    assert any(MISSING_MODEL in m and "could not load" in m for m in shown)
    assert [n["params"]["state"] for n in conn.notifications if n["method"] == "codellama/didChangeStatus"][
        -1
    ] == "error"
    # The document opened before initialize was dropped; requests now get an empty answer.
    await conn.notify(
        "textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": FUNCTION}}
    )
    assert (await conn.request("textDocument/inlineCompletion", inline_request()))["result"]["items"] == []
    await use_good_model(conn, scripted_checkpoint)  # a settings change recovers
    await completes_normally(conn)


@pytest.mark.parametrize(
    "params",
    [
        {"textDocument": {"uri": URI}, "position": {"line": "one", "character": 4}, "context": {"triggerKind": 2}},
        {"textDocument": {"uri": URI}, "position": {"line": -1, "character": 4}, "context": {"triggerKind": 2}},
        {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 99}},
        {"position": {"line": 1, "character": 4}, "context": {"triggerKind": 2}},
        None,
        [1, 2, 3],
    ],
    ids=["string-line", "negative-line", "bad-trigger", "no-document", "null", "array"],
)
async def test_malformed_params_get_invalid_params(conn, scripted_checkpoint, params):
    await use_good_model(conn, scripted_checkpoint)
    response = await conn.request("textDocument/inlineCompletion", params)
    assert response["error"]["code"] == INVALID_PARAMS, response
    assert "$.params" in response["error"]["message"]  # names the field that was wrong
    await completes_normally(conn)


async def test_unknown_methods_and_broken_json(conn, scripted_checkpoint):
    await use_good_model(conn, scripted_checkpoint)
    assert (await conn.request("codellama/noSuchThing"))["error"]["code"] == METHOD_NOT_FOUND
    await conn.send_bytes(b'{"jsonrpc": "2.0", "id": 999, "method": "textDocument/inlineCom')  # cut short
    await conn.send_bytes(b"[1, 2, 3]")
    await conn.send_bytes(b'"just a string"')
    await conn.send_bytes('{"jsonrpc": "2.0", "method": "\udcff"}'.encode("utf-8", "surrogatepass"))
    await conn.notify("textDocument/didChange", {"textDocument": {"uri": URI}, "contentChanges": "not a list"})
    await conn.notify("$/noSuchNotification", {"x": 1})
    await completes_normally(conn)


async def test_bad_command_arguments(conn, scripted_checkpoint):
    await use_good_model(conn, scripted_checkpoint)
    for arguments in ([], [1], [{"id": 5}], None):
        response = await conn.request(
            "workspace/executeCommand", {"command": "codellama.accept", "arguments": arguments}
        )
        assert response["error"]["code"] == INVALID_PARAMS, (arguments, response)
    response = await conn.request("workspace/executeCommand", {"command": "rm -rf", "arguments": []})
    assert "error" in response
    await completes_normally(conn)
