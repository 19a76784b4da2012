"""A bounded, seeded fuzz of the real server process: thousands of hostile messages, and
afterwards the server is alive, answers a normal completion exactly, has shown the user a
handful of messages at most, and holds no more memory than before. Over TCP, two fuzzing
connections cannot disturb a third, well-behaved one."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from lsp.server import SHOWN_PER_MINUTE
from tests.lsp.fuzz_messages import fuzz_frames
from tests.lsp.helpers import SCRIPT, TcpServer, server_command
from tests.lsp.raw_client import RawConnection

pytestmark = pytest.mark.asyncio

MESSAGES = 5000
SEEDS = (11, 12)
FUNCTION = "def add(a, b):\n    \n"


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def completes_exactly(conn: RawConnection, uri: str) -> None:
    document = {"uri": uri, "languageId": "python", "version": 1, "text": FUNCTION}
    await conn.notify("textDocument/didOpen", {"textDocument": document})
    params = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 2}}
    response = await conn.request("textDocument/inlineCompletion", params)
    assert [i["insertText"] for i in response["result"]["items"]] == ["    " + SCRIPT], response


async def fuzz(conn: RawConnection, seed: int, count: int) -> None:
    for i, data in enumerate(fuzz_frames(random.Random(seed), count)):
        conn.writer.write(data)
        await conn.writer.drain()
        if i % 250 == 0:  # the server keeps answering throughout
            assert "result" in await conn.request("codellama/status", timeout=60)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
@pytest.mark.parametrize("seed", SEEDS)
async def test_fuzzed_stdio_session_survives_with_flat_memory(scripted_checkpoint, seed):
    conn = await RawConnection.stdio(*server_command("--model", str(scripted_checkpoint), "--log-level", "error"))
    await conn.initialize()
    await conn.wait_until_ready()
    await completes_exactly(conn, "file:///fuzz/warm_up.py")
    before = resident_mb(conn.process.pid)
    await fuzz(conn, seed, MESSAGES)
    await completes_exactly(conn, "file:///fuzz/after.py")
    after = resident_mb(conn.process.pid)
    print(f"seed {seed}: {MESSAGES} messages, RSS {before:.0f} -> {after:.0f} MB")
    assert after - before < 40, (before, after)
    assert len(conn.shown_messages()) <= SHOWN_PER_MINUTE + 2, conn.shown_messages()
    await conn.request("shutdown")
    await conn.notify("exit")
    assert await asyncio.wait_for(conn.process.wait(), 30) == 0


async def test_fuzzing_connections_cannot_disturb_a_well_behaved_one(scripted_checkpoint):
    server = await TcpServer.start("--model", str(scripted_checkpoint), "--log-level", "error")
    try:
        good = await RawConnection.tcp("127.0.0.1", server.port)
        await good.initialize()
        await good.wait_until_ready()
        attackers = [await RawConnection.tcp("127.0.0.1", server.port) for _ in SEEDS]
        for attacker in attackers:
            await attacker.initialize()

        async def behave() -> None:
            for i in range(20):
                await completes_exactly(good, f"file:///fuzz/good_{i}.py")

        await asyncio.gather(
            behave(), *(fuzz(a, seed, MESSAGES // 2) for a, seed in zip(attackers, SEEDS, strict=True))
        )
        for attacker in attackers:
            await attacker.close()
        await completes_exactly(good, "file:///fuzz/good_last.py")
        assert good.shown_messages() == []  # the others' problems are theirs
        await good.close()
    finally:
        assert await server.stop() == 0
