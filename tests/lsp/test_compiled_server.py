"""The real server compiling its decode step: it answers meanwhile, says so, and answers the same after."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from lsprotocol import types

from tests.lsp.helpers import inline, open_document, server_command, start_client, status, wait_for_state
from tests.lsp.raw_client import RawConnection

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXT = "def total(values):\n    result = 0\n    for value in values:\n        \n    return result\n"
CURSOR = types.Position(3, 8)


@pytest.fixture
def slow_compiler(tmp_path, monkeypatch):
    """The server builds its C decode step anew (an empty cache) with a C compiler that takes 5 s
    more: the step is then "compiling" for long enough to be seen (from the cache it takes ms)."""
    script = tmp_path / "slow-cc"
    script.write_text(f'#!/bin/sh\nsleep 5\nexec {shutil.which("cc") or "gcc"} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


async def test_the_server_answers_while_compiling_and_the_same_once_compiled(tiny_checkpoint, slow_compiler):
    # A generous time budget: while compiling, the eager answer shares the CPU with the compiler.
    options = {"maxTokens": 24, "timeBudgetMs": 60_000}
    client = await start_client("neovim", "--model", str(tiny_checkpoint), "--compile", "on", options=options)
    try:
        await wait_for_state(client, "ready")
        assert (await status(client))["decodeStep"] == "decode step compiling"
        open_document(client, "file:///work/project/a.py", TEXT)
        [eager] = await inline(client, "file:///work/project/a.py", CURSOR)
        deadline = time.monotonic() + 300
        while (current := await status(client))["decodeStep"] == "decode step compiling":
            assert time.monotonic() < deadline, "still compiling after 5 minutes"
            await asyncio.sleep(0.5)
        assert current["decodeStep"].startswith("decode step compiled ("), current["decodeStep"]
        announced = lambda: any((s.get("decodeStep") or "").startswith("decode step compiled") for s in client.statuses)  # noqa: E731
        while not announced():  # didChangeStatus follows within the server's poll interval
            assert time.monotonic() < deadline, client.statuses[-1]
            await asyncio.sleep(0.2)
        reports = [r for token, r in client.progress_reports.items() if token.startswith("codellama-load")]
        messages = [getattr(r, "message", "") or "" for r in reports[0]]
        assert any("compiling the decode step" in m for m in messages), messages
        open_document(client, "file:///work/project/b.py", TEXT)  # a new request, not a remembered answer
        [compiled] = await inline(client, "file:///work/project/b.py", CURSOR)
        assert compiled.insert_text == eager.insert_text and eager.insert_text.strip()
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_the_server_exits_cleanly_in_the_middle_of_a_compile(slow_compiler):
    # Finalizing the interpreter under a running torch.compile aborted the process (SIGABRT):
    # seen with the shipped model, in the middle of a cold compile of about 20 s. Now it is the
    # C step's compiler that is running.
    conn = await RawConnection.stdio(*server_command("--compile", "on"))
    try:
        await conn.request("initialize", {"processId": None, "capabilities": {}})
        await conn.notify("initialized", {})
        deadline = time.monotonic() + 120
        while (await conn.status())["decodeStep"] != "decode step compiling":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # the compiler is running
        await conn.request("shutdown", None)
        await conn.notify("exit", None)
        assert await asyncio.wait_for(conn.process.wait(), 30) == 0
    finally:
        await conn.close()
