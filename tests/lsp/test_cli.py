"""The `codellama-lsp` command: check, complete, and serving over TCP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from lsprotocol import types
from pytest_lsp import client_capabilities, make_test_lsp_client

from lsp.cli import build_parser
from tests.lsp.helpers import SCRIPT, free_port, server_command
from tests.lsp.raw_client import RawConnection


def run_command(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lsp", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_serving_defaults_to_stdio_and_localhost():
    args = build_parser().parse_args([])
    assert args.command is None and not args.tcp and args.host == "127.0.0.1"
    args = build_parser().parse_args(["--tcp", "--port", "0", "--log-file", "x.log", "--model", "m"])
    assert args.tcp and args.port == 0 and args.log_file == "x.log" and args.model == "m"


def test_check_prints_what_a_user_needs(tiny_checkpoint):
    result = run_command("check", "--model", str(tiny_checkpoint), "--device", "cpu", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("model:", "device:", "quantization:", "load time:", "memory:", "test completion:"):
        assert label in out, out
    assert str(tiny_checkpoint) in out and "RSS" in out and "KV cache" in out
    assert "from the KV cache" in out.split("next keystroke:")[1]
    assert "decode step eager: off (as the server's --compile off)" in out  # conftest's default


def test_a_bad_compile_default_is_named():
    result = subprocess.run(
        [sys.executable, "-m", "lsp", "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CODELLAMA_LSP_COMPILE": "fast"},
    )  # fmt: skip
    assert result.returncode != 0 and "$CODELLAMA_LSP_COMPILE is 'fast': expected one of auto, on, off" in result.stderr


def test_check_names_a_missing_model(tmp_path):
    result = run_command("check", "--model", str(tmp_path / "missing"), "--device", "cpu")
    assert result.returncode == 1
    assert str(tmp_path / "missing") in result.stdout


def test_complete_prints_a_middle(tiny_checkpoint, tmp_path):
    source = tmp_path / "add.py"
    source.write_text("def add(a, b):\n    \n", encoding="utf-8")
    result = run_command("complete", "--model", str(tiny_checkpoint), "--device", "cpu", "--max-tokens", "4",
                         f"{source}:2:5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "prompt" in result.stderr and "generated" in result.stderr


@pytest.mark.asyncio
async def test_serves_over_tcp(scripted_checkpoint, tmp_path):
    port, log_file = free_port(), tmp_path / "server.log"
    command = ["--tcp", "--port", str(port), "--model", str(scripted_checkpoint), "--device", "cpu"]
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "lsp", *command, "--log-file", str(log_file))
    client = make_test_lsp_client()
    try:
        for _ in range(300):  # the server listens within a few seconds (it loads torch later)
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        await client.initialize_session(types.InitializeParams(capabilities=client_capabilities("neovim")))
        uri = "file:///work/project/tcp.py"
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, "def add(a, b):\n    \n"))
        )
        for _ in range(600):
            state = await client.protocol.send_request_async("codellama/status", None)
            if state.state == "ready":
                break
            await asyncio.sleep(0.1)
        params = types.InlineCompletionParams(
            types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked),
            types.TextDocumentIdentifier(uri),
            types.Position(1, 4),
        )
        result = await client.text_document_inline_completion_async(params)
        assert result.items[0].insert_text == "    " + SCRIPT
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.sleep(0.5)
        assert server.returncode is None  # `exit` ends that connection, not the server
        server.terminate()  # SIGTERM: an orderly stop
        assert await asyncio.wait_for(server.wait(), 30) == 0
        assert "loaded" in log_file.read_text(encoding="utf-8")  # --log-file got the log
    finally:
        await client.stop()
        if server.returncode is None:
            server.kill()
            await server.wait()


@pytest.mark.asyncio
async def test_exits_when_the_editor_dies(tmp_path):
    # An editor that crashes sends no `exit`: the server must not live on holding a model.
    editor = await asyncio.create_subprocess_exec("sleep", "120")
    conn = await RawConnection.stdio(*server_command("--model", str(tmp_path / "none")))
    try:
        await conn.request("initialize", {"processId": editor.pid, "capabilities": {}})
        await conn.notify("initialized", {})
        await conn.status()
        # The editor dies before or after the server handles `initialized` (an async handler,
        # which may run after this status request): either way the server must end.
        editor.kill()
        await editor.wait()
        assert await asyncio.wait_for(conn.process.wait(), 30) == 1
    finally:
        await conn.close()
