"""A team on one shared inference server vs each editor with the model in its own process.

    python -m lsp.team_bench --llama-server PATH/TO/llama-server [--model PATH] [--editors 1 4]

The model (default: the shipped one) is exported to GGUF by our own `convert --format gguf`
and served by llama.cpp's `llama-server --parallel 4`. Then N simulated editors at once
each run lsp.bench's typing session (each into its own file of the json package), each
through its own language server: once with the model in the language server's process,
once with `--backend` pointing at the llama.cpp server. Printed: latency of the answers
that carried a completion (p50/p95, all editors together) and the share of prompt tokens
served from a KV cache (our own in process; the server's prefix cache, as it reports).

On one small machine the in-process editors share its cores with each other and the
backend rows share them with llama-server: the ratios say how the designs compare here,
not what a GPU server gives.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from engine.machine import describe_machine
from lsp.bench import Session, replay, start_server, status, stop_server
from lsp.status import percentile

FILE_PAIRS = [("decoder", "encoder"), ("encoder", "scanner"), ("scanner", "tool"), ("tool", "decoder")]
"""(typed into, visited) per editor: each its own file, so no two prompts are the same."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_gguf(binary: str, gguf: Path, parallel: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
               "-c", str(1024 * parallel), "-t", str(threads), "--no-webui"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"llama-server did not start: {' '.join(command)}")


async def editors_at_once(server_args: list[str], editors: int, args: argparse.Namespace) -> dict:
    options = {"maxTokens": args.max_tokens}
    clients = [await start_server(server_args, options) for _ in range(editors)]
    if any(c is None for c in clients):
        raise RuntimeError("a language server did not get ready")
    sessions = [Session(c) for c in clients]  # type: ignore[arg-type]
    key, pause, think = args.key_ms / 1000, args.line_pause_ms / 1000, args.think_ms / 1000
    await asyncio.gather(*(replay(s, key, pause, think, FILE_PAIRS[i % 4]) for i, s in enumerate(sessions)))
    shown = [(r.answered - r.sent) * 1000 for s in sessions for r in s.requests if r.answered and r.items]
    statuses = [await status(c) for c in clients]  # type: ignore[arg-type]
    for c in clients:
        await stop_server(c)  # type: ignore[arg-type]
    reused = sum(s["tokensReused"] for s in statuses)
    prompt = reused + sum(s["tokensPrefilled"] for s in statuses)
    return {
        "requests": sum(len(s.requests) for s in sessions),
        "shown": len(shown),
        "p50": percentile(shown, 50),
        "p95": percentile(shown, 95),
        "cached": reused / prompt if prompt else 0.0,
        "failed": sum(s["failed"] for s in statuses),
    }


async def run(args: argparse.Namespace) -> int:
    from engine.loader import model_path

    model = str(model_path(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.gguf"
        from lsp.cli import main as lsp_main

        if lsp_main(["convert", "--model", model, "--format", "gguf", "--out", str(gguf)]) != 0:
            return 1
        process, url = serve_gguf(args.llama_server, gguf, args.parallel, args.server_threads)
        try:
            rows = []
            for editors in args.editors:
                in_process = ["--model", model, "--device", "cpu", "--threads", str(args.threads)]
                remote = ["--model", model, "--backend", url, "--backend-kind", args.backend_kind]
                for label, server_args in (("in process", in_process), (f"llama-server ({args.backend_kind})", remote)):
                    result = await editors_at_once(server_args, editors, args)
                    rows.append((editors, label, result))
                    print(f"done: {editors} editor(s), {label}", file=sys.stderr)
        finally:
            process.kill()
    print(f"model: {model}, exported to GGUF f32; llama-server --parallel {args.parallel} -t {args.server_threads}")
    print(f"machine: {describe_machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"session per editor: lsp.bench's, a keystroke every {args.key_ms:.0f} ms, maxTokens {args.max_tokens}")
    print()
    header = "editors | model runs | requests | answers with a completion | p50 ms | p95 ms | prompt tokens cached"
    print(f"| {header} | failed |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for editors, label, r in rows:
        p50 = "-" if r["p50"] is None else f"{r['p50']:.0f}"
        p95 = "-" if r["p95"] is None else f"{r['p95']:.0f}"
        print(f"| {editors} | {label} | {r['requests']} | {r['shown']} | {p50} | {p95} | {100 * r['cached']:.0f}% "
              f"| {r['failed']} |")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.team_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", required=True, help="the llama-server binary (.ci/build-llama-server)")
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--editors", type=int, nargs="+", default=[1, 4], help="editors at once (default 1 4)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server --parallel (default 4)")
    parser.add_argument("--server-threads", type=int, default=1, help="llama-server -t (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="each in-process server's torch threads (default 1)")
    parser.add_argument("--backend-kind", default="llamacpp", choices=["openai", "llamacpp"])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--key-ms", type=float, default=120.0)
    parser.add_argument("--line-pause-ms", type=float, default=400.0)
    parser.add_argument("--think-ms", type=float, default=1000.0)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
