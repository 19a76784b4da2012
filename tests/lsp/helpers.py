"""Driving the real server in tests: start it, wait for its model, ask for completions."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from lsp.documents import code_units

CLIENTS = ["neovim", "visual-studio-code"]
"""pytest-lsp's captured client capabilities the end-to-end tests run with."""
SCRIPT = "return a + b"
"""What the scripted test model (tests/lsp/scripted_model.py) writes."""
LONG_SCRIPT = SCRIPT + "  # the total of first and second values"
"""What the looping test model repeats: longer than post-processing's loop detection looks."""


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lsp", "--device", "cpu", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpServer:
    """`codellama-lsp --tcp` as a subprocess on a free localhost port."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process, self.port = process, port

    @classmethod
    async def start(cls, *args: str) -> TcpServer:
        port = free_port()
        process = await asyncio.create_subprocess_exec(*server_command("--tcp", "--port", str(port), *args))
        for _ in range(300):  # it listens within seconds (torch loads later)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return cls(process, port)
            except OSError:
                assert process.returncode is None, "the TCP server exited"
                await asyncio.sleep(0.1)
        raise TimeoutError(f"nothing listens on port {port}")

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), 30)


async def start_client(client_name: str, *server_args: str, options: dict | None = None) -> LanguageClient:
    """A pytest-lsp client with `client_name`'s capabilities, connected to a fresh server.

    The client also records the server's `codellama/didChangeStatus` notifications in
    `client.statuses` and the InitializeResult in `client.initialize_result`.
    """
    client = await ClientServerConfig(server_command=server_command(*server_args)).start()
    client.statuses = []

    @client.feature("codellama/didChangeStatus")
    def record_status(params: Any) -> None:
        client.statuses.append(plain(params))

    client.initialize_result = await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities(client_name),
            root_uri=Path("/work/project").as_uri(),
            initialization_options=options,
        )
    )
    return client


def plain(value: Any) -> Any:
    """pygls' client decodes custom results into namedtuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def status(client: LanguageClient) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async("codellama/status", None))


async def idle(client: LanguageClient, timeout: float = 30) -> dict[str, Any]:
    """The status once the model is not generating (e.g. a prefetch for the shown item is done)."""
    deadline = time.monotonic() + timeout
    while (current := await status(client))["generating"]:
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.02)
    return current


async def wait_for_state(client: LanguageClient, *states: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = await status(client)
        if current["state"] in states:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"server state stayed {current['state']!r}, wanted {states}: {current}")
        await asyncio.sleep(0.1)


def encoding(client: LanguageClient) -> str:
    """The position encoding the server chose for this client."""
    caps = client.capabilities.general if client.capabilities else None
    offered = (caps.position_encodings if caps else None) or ["utf-16"]
    return str(getattr(offered[0], "value", offered[0]))


def position(client: LanguageClient, text: str, offset: int) -> types.Position:
    """The LSP position of a text offset, in the client's encoding."""
    line = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return types.Position(line, code_units(text[line_start:offset], encoding(client)))


_versions: dict[str, int] = {}


def open_document(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    _versions[uri] = 1
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, language, 1, text)))


def insert(client: LanguageClient, uri: str, at: types.Position, text: str) -> None:
    """An incremental didChange inserting text at a position."""
    _versions[uri] = _versions.get(uri, 1) + 1
    change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=_versions[uri], uri=uri), [change]
        )
    )


def replace(client: LanguageClient, uri: str, where: types.Range, text: str) -> None:
    """An incremental didChange replacing a range (as accepting an inline item does)."""
    _versions[uri] = _versions.get(uri, 1) + 1
    change = types.TextDocumentContentChangePartial(range=where, text=text)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=_versions[uri], uri=uri), [change]
        )
    )


def replace_all(client: LanguageClient, uri: str, text: str) -> None:
    """A full-document didChange."""
    _versions[uri] = _versions.get(uri, 1) + 1
    change = types.TextDocumentContentChangeWholeDocument(text=text)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=_versions[uri], uri=uri), [change]
        )
    )


def inline_params(
    uri: str,
    at: types.Position,
    selected: types.SelectedCompletionInfo | None = None,
    kind: types.InlineCompletionTriggerKind = types.InlineCompletionTriggerKind.Automatic,
):
    context = types.InlineCompletionContext(kind, selected)
    return types.InlineCompletionParams(context, types.TextDocumentIdentifier(uri), at)


async def inline(
    client: LanguageClient,
    uri: str,
    at: types.Position,
    kind: types.InlineCompletionTriggerKind = types.InlineCompletionTriggerKind.Automatic,
) -> list[types.InlineCompletionItem]:
    result = await client.text_document_inline_completion_async(inline_params(uri, at, kind=kind))
    return list(result.items) if isinstance(result, types.InlineCompletionList) else list(result or [])


async def configure(client: LanguageClient, settings: dict[str, Any]) -> None:
    """Send didChangeConfiguration and wait until the server has applied it (status answers after)."""
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"codellama": settings}))
    await status(client)
