"""Does the server's memory stay flat while a user types, and come back when documents close?

    python -m lsp.memory_bench --model PATH [--minutes 10] [--key-ms 50]

Phase 1 types into a real file (the standard library's json/decoder.py) one key every
--key-ms, for --minutes, through the real server over stdio (a didChange and an inline
completion request per key, as editors send them), and samples the server's resident
memory every 10 s. The slope (least squares, after the first minute's warm-up) is the
figure: a leak shows as MB per minute. Phase 2 opens five 20 MB documents, asks for a
completion in each, closes them, and reports resident memory before, with and after them.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from engine.machine import describe_machine
from lsp.bench import Session, status

SAMPLE_S = 10.0
WARM_UP_S = 60.0
TYPED = "        total = sum(value for value in values if value is not None)\n"


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return 60 * cov / var if var else 0.0


async def start(model: str) -> tuple[LanguageClient, int]:
    client = LanguageClient("codellama-lsp-memory-bench", "0.1")

    @client.feature("codellama/didChangeStatus")
    def ignore_status(params: Any) -> None:
        return None

    await client.start_io(sys.executable, "-m", "lsp", "--model", model, "--device", "cpu")
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
    client.initialized(types.InitializedParams())
    while (await status(client))["state"] == "loading":
        await asyncio.sleep(0.2)
    return client, client._server.pid  # the server subprocess


async def type_for(session: Session, pid: int, seconds: float, key_s: float) -> list[tuple[float, float]]:
    root = Path(json.__file__).parent
    uri = (root / "decoder.py").as_uri()
    session.open(uri, (root / "decoder.py").read_text(encoding="utf-8") + "\n\ndef summary(values):\n")
    offset = len(session.texts[uri])
    samples, started, next_sample, i = [], time.perf_counter(), 0.0, 0
    while (elapsed := time.perf_counter() - started) < seconds:
        if elapsed >= next_sample:
            samples.append((elapsed, resident_mb(pid)))
            next_sample += SAMPLE_S
        key = TYPED[i % len(TYPED)]
        if i and i % len(TYPED) == 0:  # a line typed: take it back, so the file does not grow
            start = offset - len(TYPED)
            offset = session.edit(uri, start, offset, "")
        offset = session.edit(uri, offset, offset, key)
        session.request(uri, offset)
        session.pending = [f for f in session.pending if not f.done()]
        session.requests.clear()
        i += 1
        await asyncio.sleep(key_s)
    await asyncio.gather(*session.pending, return_exceptions=True)
    samples.append((time.perf_counter() - started, resident_mb(pid)))
    return samples


async def big_documents(session: Session, pid: int) -> tuple[float, float, float]:
    text = "def f(a):\n    return a\n" * 800_000  # 19 MB
    uri = "file:///memory-bench/small.py"
    session.open(uri, "def add(a, b):\n    \n")
    session.request(uri, len("def add(a, b):\n    "))
    await asyncio.gather(*session.pending, return_exceptions=True)
    await asyncio.sleep(1)
    before = resident_mb(pid)
    for i in range(5):
        session.open(f"file:///memory-bench/big{i}.py", text)
    session.request(uri, len("def add(a, b):\n    "))
    await asyncio.gather(*session.pending, return_exceptions=True)
    with_them = resident_mb(pid)
    for i in range(5):
        session.client.text_document_did_close(
            types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(f"file:///memory-bench/big{i}.py"))
        )
    await status(session.client)
    await asyncio.sleep(1)
    return before, with_them, resident_mb(pid)


async def run(args: argparse.Namespace) -> int:
    client, pid = await start(args.model)
    session = Session(client)
    samples = await type_for(session, pid, args.minutes * 60, args.key_ms / 1000)
    before, with_them, after = await big_documents(session, pid)
    steady = [(t, m) for t, m in samples if t >= WARM_UP_S] or samples
    counters = await status(client)
    print(f"model: {args.model}; machine: {describe_machine()}; {time.strftime('%Y-%m-%d')}")
    print(f"typing: a key every {args.key_ms:.0f} ms for {args.minutes:g} min, {counters['requests']} requests")
    print()
    print("| | MB |")
    print("| --- | ---: |")
    print(f"| resident at start of typing | {samples[0][1]:.0f} |")
    print(f"| resident after the warm-up minute | {steady[0][1]:.0f} |")
    print(f"| resident at end of typing | {samples[-1][1]:.0f} |")
    print(f"| **slope after warm-up, MB/min** | **{slope_per_minute(steady):.2f}** |")
    print(f"| before five 20 MB documents | {before:.0f} |")
    print(f"| with them open | {with_them:.0f} |")
    print(f"| after closing them | {after:.0f} |")
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.memory_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--key-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    if args.model is None:
        from engine.defaults import default_model_path

        args.model = str(default_model_path())
    if not os.path.exists("/proc/self/status"):
        print("memory_bench reads /proc: Linux only", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
