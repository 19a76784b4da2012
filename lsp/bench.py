"""Replay an editing session against the real server and report what a user would feel.

    python -m lsp.bench --model PATH [--device cpu] [--quantize int8] [--key-ms 100]

A scripted user types two functions into a real file (the standard library's
json/decoder.py), as an editor sends it: a didChange and an inline-completion request per
keystroke, without waiting for the answer, auto-indent after each line. There are pauses
after lines and functions, a backspace-and-retype, an import added at the top of the file
(an edit far from the cursor), and a visit to a second file. The server runs as a
subprocess over stdio with its default settings.

Printed: request-to-answer latency (p50/p95) of the answers that carried a completion and
of all answers, how many requests were cancelled (superseded by the next keystroke) or
served from typed-through, the KV-cache hit rate and the tokens prefilled per model call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from engine.machine import describe_machine
from lsp.status import percentile

FUNCTIONS = [
    '''def parse_version(text):
    """Split "1.2.3" into a tuple of integers."""
    parts = []
    for piece in text.strip().split("."):
        parts.append(int(piece))
    return tuple(parts)
''',
    """def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    total = 0.0
    averages = []
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averages.append(total / min(i + 1, window))
    return averages
""",
]


@dataclass
class Request:
    sent: float
    answered: float | None = None
    items: int = 0


@dataclass
class Session:
    """The editor's side: the documents as it sees them, and every request it sent."""

    client: LanguageClient
    texts: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    pending: list[asyncio.Future] = field(default_factory=list)

    def open(self, uri: str, text: str) -> None:
        self.texts[uri], self.versions[uri] = text, 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, text))
        )

    def position(self, uri: str, offset: int) -> types.Position:
        text = self.texts[uri]
        line_start = text.rfind("\n", 0, offset) + 1
        units = len(text[line_start:offset].encode("utf-16-le")) // 2
        return types.Position(text.count("\n", 0, offset), units)

    def edit(self, uri: str, start: int, end: int, new_text: str) -> int:
        """Replace text[start:end] (an incremental change); returns the offset after the new text."""
        change = types.TextDocumentContentChangePartial(
            range=types.Range(self.position(uri, start), self.position(uri, end)), text=new_text
        )
        self.texts[uri] = self.texts[uri][:start] + new_text + self.texts[uri][end:]
        self.versions[uri] += 1
        document = types.VersionedTextDocumentIdentifier(version=self.versions[uri], uri=uri)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(document, [change]))
        return start + len(new_text)

    def request(self, uri: str, offset: int) -> None:
        """Ask for an inline completion without waiting for it, as editors do."""
        params = types.InlineCompletionParams(
            types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
            types.TextDocumentIdentifier(uri),
            self.position(uri, offset),
        )
        record = Request(time.perf_counter())
        self.requests.append(record)
        future = asyncio.wrap_future(self.client.text_document_inline_completion(params))

        def answered(f: asyncio.Future) -> None:
            record.answered = time.perf_counter()
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                record.items = len(f.result().items)

        future.add_done_callback(answered)
        self.pending.append(future)

    async def type_text(self, uri: str, offset: int, text: str, key_s: float, line_pause_s: float) -> int:
        """Type text at offset, one keystroke at a time; a newline and the next indentation are one key."""
        i = 0
        while i < len(text):
            key = text[i]
            if key == "\n":
                indent = len(text[i + 1 :]) - len(text[i + 1 :].lstrip(" "))
                key = text[i : i + 1 + indent]
            offset = self.edit(uri, offset, offset, key)
            self.request(uri, offset)
            i += len(key)
            await asyncio.sleep(line_pause_s if key.startswith("\n") else key_s)
        return offset


def plain(value: Any) -> Any:
    """pygls' client decodes custom results into namedtuples: back to dicts."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    return value


async def status(client: LanguageClient) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async("codellama/status", None))


async def replay(session: Session, key_s: float, line_pause_s: float, think_s: float) -> None:
    root = Path(json.__file__).parent
    main_uri, other_uri = (root / "decoder.py").as_uri(), (root / "encoder.py").as_uri()
    session.open(other_uri, (root / "encoder.py").read_text(encoding="utf-8"))
    session.open(main_uri, (root / "decoder.py").read_text(encoding="utf-8") + "\n\n")
    offset = len(session.texts[main_uri])
    first, second = FUNCTIONS
    cut = first.index("    parts = []")
    offset = await session.type_text(main_uri, offset, first[:cut], key_s, line_pause_s)
    await asyncio.sleep(think_s)
    # Backspace over a word and type it again.
    for _ in range(6):
        offset = session.edit(main_uri, offset - 1, offset, "")
        session.request(main_uri, offset)
        await asyncio.sleep(key_s)
    offset = await session.type_text(main_uri, offset, first[cut - 6 : cut], key_s, line_pause_s)
    offset = await session.type_text(main_uri, offset, first[cut:], key_s, line_pause_s)
    await asyncio.sleep(think_s)
    # An import added at the top: every token after it changes.
    session.edit(main_uri, 0, 0, "import math\n")
    offset += len("import math\n")
    session.request(main_uri, offset)
    await asyncio.sleep(think_s)
    # A visit to the other file, then back.
    other_offset = session.texts[other_uri].index("\n\n", len(session.texts[other_uri]) // 2) + 1
    other_offset = await session.type_text(other_uri, other_offset, "    # TODO: ", key_s, line_pause_s)
    await asyncio.sleep(think_s)
    offset = await session.type_text(main_uri, offset, "\n" + second, key_s, line_pause_s)
    await asyncio.gather(*session.pending, return_exceptions=True)


def report(model: str, settings: str, after: dict, requests: list[Request], wall_s: float) -> str:
    """Markdown tables; `after` is the server's status at the end (its counters started at 0)."""

    def count(key: str) -> int:
        return after[key]

    def ms(values: list[float], p: float) -> str:
        value = percentile(values, p)
        return "-" if value is None else f"{value:.0f}"

    latencies = [(r.answered - r.sent) * 1000 for r in requests if r.answered is not None]
    shown = [(r.answered - r.sent) * 1000 for r in requests if r.answered is not None and r.items]
    calls = count("generations")
    rows = [
        ("answers with a completion", len(shown), ms(shown, 50), ms(shown, 95)),
        ("all answers", len(latencies), ms(latencies, 50), ms(latencies, 95)),
    ]
    lines = [
        f"model: {model} ({after['message']})",
        f"machine: {describe_machine()}, {time.strftime('%Y-%m-%d')}",
        f"settings: {settings}",
        f"session: {len(requests)} requests in {wall_s:.1f} s (2 functions typed into json/decoder.py, "
        f"a backspace, an import at the top, a visit to json/encoder.py)",
        "",
        "| requests | count | p50 ms | p95 ms |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {n} | {p50} | {p95} |" for name, n, p50, p95 in rows),
        "",
        "| server counters | value |",
        "| --- | ---: |",
        f"| served by the model | {count('served')} |",
        f"| cancelled (superseded by a newer keystroke) | {count('cancelled')} |",
        f"| typed-through (no model call) | {count('typedThrough')} |",
        f"| empty answers | {count('empty')} |",
        f"| model calls | {calls} |",
        f"| KV-cache hit rate (>= half the prompt reused) | {100 * count('cacheHits') / max(calls, 1):.0f}% |",
        f"| tokens prefilled per model call (mean) | {count('tokensPrefilled') / max(calls, 1):.1f} |",
        f"| tokens generated per model call (mean) | {count('tokensGenerated') / max(calls, 1):.1f} |",
        f"| server-side latency of served requests, p50 / p95 ms | "
        f"{after['latencyMs']['p50'] or 0:.0f} / {after['latencyMs']['p95'] or 0:.0f} |",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    client = LanguageClient("codellama-lsp-bench", "0.1")

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def accept_progress(params: types.WorkDoneProgressCreateParams) -> None:
        return None

    @client.feature("codellama/didChangeStatus")
    def ignore_status(params: Any) -> None:
        return None

    command = ["-m", "lsp", "--model", args.model, "--device", args.device, "--quantize", args.quantize]
    if args.threads:
        command += ["--threads", str(args.threads)]
    await client.start_io(sys.executable, *command)
    capabilities = types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
    )
    options = {"maxTokens": args.max_tokens} if args.max_tokens else None
    await client.initialize_async(
        types.InitializeParams(capabilities=capabilities, process_id=os.getpid(), initialization_options=options)
    )
    client.initialized(types.InitializedParams())
    while (current := await status(client))["state"] == "loading":
        await asyncio.sleep(0.2)
    if current["state"] != "ready":
        print(f"the model did not load: {current['message']}", file=sys.stderr)
        return 1
    session = Session(client)
    started = time.perf_counter()
    await replay(session, args.key_ms / 1000, args.line_pause_ms / 1000, args.think_ms / 1000)
    wall = time.perf_counter() - started
    settings = (
        f"maxTokens {args.max_tokens or 'default'}, threads {args.threads or 'default'}, "
        f"a keystroke every {args.key_ms:.0f} ms"
    )
    print(report(args.model, settings, await status(client), session.requests, wall))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--threads", type=int, help="the server's torch CPU threads (default: the server's)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="the maxTokens setting (default: the server's); random-weight models never end a line, "
        "so without a limit every completion runs to the time budget",
    )
    parser.add_argument("--key-ms", type=float, default=120.0, help="time between keystrokes (default 120)")
    parser.add_argument("--line-pause-ms", type=float, default=400.0, help="pause after each line (default 400)")
    parser.add_argument("--think-ms", type=float, default=1500.0, help="pause between steps (default 1500)")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
