"""Replay an editing session against the real server and report what a user would feel.

    python -m lsp.bench --model PATH [--device cpu] [--quantize int8] [--key-ms 100]

A scripted user types two functions into a real file (the standard library's
json/decoder.py), as an editor sends it: a didChange and an inline-completion request per
keystroke, without waiting for the answer, auto-indent after each line. There are pauses
after lines and functions, a backspace-and-retype, an import added at the top of the file
(an edit far from the cursor), and a visit to a second file. The server runs as a
subprocess over stdio with its default settings.

Printed: request-to-answer latency (p50/p95) of the answers that carried a completion and
of all answers; the share of requests answered with a suggestion, how many characters of a
suggestion the user went on to type (what accepting it would have saved), and how many
suggestions were a degenerate repetition (the target is 0); how many requests were cancelled
(superseded by the next keystroke) or served from typed-through, the KV-cache hit rate and
the tokens prefilled per model call. Then an accept phase: a suggestion read for --read-ms and
accepted, --accepts times, and the time from the accept to the next suggestion on screen,
with the server's prefetch on and off.
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
from engine.options import COMPILE_MODES
from engine.postprocess import repetition_start
from lsp.status import percentile

COMPILE_WAIT_S = 600.0
"""How long the benchmark waits for the server's decode step to compile."""

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
    shown: str = ""
    """The first item's completion (insertText after the line's text before the cursor)."""
    typed_next: str = ""
    """What the scripted user went on to type at that place (filled as the replay proceeds)."""


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

    def request(self, uri: str, offset: int) -> Request:
        """Ask for an inline completion without waiting for it, as editors do."""
        at = self.position(uri, offset)
        params = types.InlineCompletionParams(
            types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
            types.TextDocumentIdentifier(uri),
            at,
        )
        record = Request(time.perf_counter())
        self.requests.append(record)
        future = asyncio.wrap_future(self.client.text_document_inline_completion(params))

        def answered(f: asyncio.Future) -> None:
            record.answered = time.perf_counter()
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                record.items = len(f.result().items)
                if record.items:
                    record.shown = f.result().items[0].insert_text[at.character :]

        future.add_done_callback(answered)
        self.pending.append(future)
        record.future = future  # type: ignore[attr-defined]
        return record

    async def type_text(self, uri: str, offset: int, text: str, key_s: float, line_pause_s: float) -> int:
        """Type text at offset, one keystroke at a time; a newline and the next indentation are one key."""
        i = 0
        while i < len(text):
            key = text[i]
            if key == "\n":
                indent = len(text[i + 1 :]) - len(text[i + 1 :].lstrip(" "))
                key = text[i : i + 1 + indent]
            offset = self.edit(uri, offset, offset, key)
            self.request(uri, offset).typed_next = text[i + len(key) :].split("\n", 1)[0]
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


async def replay(
    session: Session, key_s: float, line_pause_s: float, think_s: float, files: tuple[str, str] = ("decoder", "encoder")
) -> None:
    """The scripted session, typed into json/<files[0]>.py, visiting json/<files[1]>.py."""
    root = Path(json.__file__).parent
    main_file, other_file = (root / f"{name}.py" for name in files)
    main_uri, other_uri = main_file.as_uri(), other_file.as_uri()
    session.open(other_uri, other_file.read_text(encoding="utf-8"))
    session.open(main_uri, main_file.read_text(encoding="utf-8") + "\n\n")
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
    with_items = [r for r in requests if r.items]
    # Of what was shown, the characters the user then typed anyway: what accepting would have saved.
    accepted = [len(os.path.commonprefix([r.shown.split("\n", 1)[0], r.typed_next])) for r in with_items]  # noqa: RUF071
    degenerate = sum(any(repetition_start(line) is not None for line in r.shown.split("\n")) for r in with_items)
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
        "| what the user saw | value |",
        "| --- | ---: |",
        f"| requests answered with a suggestion | {100 * len(with_items) / max(len(requests), 1):.0f}% |",
        f"| characters of a suggestion the user went on to type (mean) | {sum(accepted) / max(len(accepted), 1):.1f} |",
        f"| suggestions that were a degenerate repetition | {degenerate} |",
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


async def accept_latencies(session: Session, accepts: int, read_s: float) -> list[float]:
    """ms from accepting a suggestion to the next one on screen, `accepts` times in a copy of decoder.py.

    The user reads each suggestion for read_s, accepts it (its text replaces its range, then its
    command runs, as VS Code does), and the editor asks at once at the new cursor."""
    root = Path(json.__file__).parent
    uri = (root / "decoder_accepts.py").as_uri()
    session.open(uri, (root / "decoder.py").read_text(encoding="utf-8") + "\n\ndef summary(values):\n    ")
    offset, times = len(session.texts[uri]), []
    record = session.request(uri, offset)
    for _ in range(accepts * 3):
        if len(times) >= accepts:
            break
        result = await record.future  # type: ignore[attr-defined]
        if not result or not result.items:
            offset = session.edit(uri, offset, offset, "\n    ")  # nothing to accept: a new line
            record = session.request(uri, offset)
            continue
        item = result.items[0]
        await asyncio.sleep(read_s)
        start = session.texts[uri].rfind("\n", 0, offset) + 1
        end = start + len(session.texts[uri][start:].split("\n", 1)[0][: item.range.end.character])
        offset = session.edit(uri, start, end, item.insert_text)
        await session.client.workspace_execute_command_async(
            types.ExecuteCommandParams(item.command.command, item.command.arguments)
        )
        record = session.request(uri, offset)
        await record.future  # type: ignore[attr-defined]
        times.append((record.answered - record.sent) * 1000)
    session.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    return times


async def start_server(server_args: list[str], options: dict | None) -> LanguageClient | None:
    """`codellama-lsp SERVER_ARGS` over stdio, initialized, its model ready (None: it failed to load)."""
    client = LanguageClient("codellama-lsp-bench", "0.1")

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def accept_progress(params: types.WorkDoneProgressCreateParams) -> None:
        return None

    @client.feature("codellama/didChangeStatus")
    def ignore_status(params: Any) -> None:
        return None

    await client.start_io(sys.executable, "-m", "lsp", *server_args)
    capabilities = types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
    )
    await client.initialize_async(
        types.InitializeParams(capabilities=capabilities, process_id=os.getpid(), initialization_options=options)
    )
    client.initialized(types.InitializedParams())
    while (current := await status(client))["state"] == "loading":
        await asyncio.sleep(0.2)
    if current["state"] != "ready":
        print(f"the model did not load: {current['message']}", file=sys.stderr)
        return None
    # Measure the server as it settles: with its decode step compiled, where it compiles one.
    deadline = time.monotonic() + COMPILE_WAIT_S
    while (current := await status(client))["decodeStep"] == "decode step compiling":
        if time.monotonic() > deadline:
            print(f"still compiling after {COMPILE_WAIT_S:.0f} s: measuring it as it is", file=sys.stderr)
            break
        await asyncio.sleep(0.5)
    print(f"server ready: {current['decodeStep']}", file=sys.stderr)
    return client


async def stop_server(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


async def run(args: argparse.Namespace) -> int:
    command = ["--model", args.model, "--device", args.device, "--quantize", args.quantize, "--compile", args.compile]
    if args.threads:
        command += ["--threads", str(args.threads)]
    options = {"maxTokens": args.max_tokens} if args.max_tokens else None
    client = await start_server(command, options)
    if client is None:
        return 1
    session = Session(client)
    started = time.perf_counter()
    await replay(session, args.key_ms / 1000, args.line_pause_ms / 1000, args.think_ms / 1000)
    wall = time.perf_counter() - started
    settings = (
        f"maxTokens {args.max_tokens or 'default'}, threads {args.threads or 'default'}, "
        f"--compile {args.compile}, a keystroke every {args.key_ms:.0f} ms"
    )
    print(report(args.model, settings, await status(client), session.requests, wall))
    print()
    print(
        f"| accept -> next suggestion on screen ({args.accepts} accepts, {args.read_ms:.0f} ms reading each) "
        "| p50 ms | p95 ms |"
    )
    print("| --- | ---: | ---: |")
    for prefetch in (True, False):
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"codellama": {**(options or {}), "prefetch": prefetch}})
        )
        times = await accept_latencies(Session(client), args.accepts, args.read_ms / 1000)
        label = "prefetch on (the default)" if prefetch else "prefetch off"
        print(f"| {label} | {percentile(times, 50) or 0:.0f} | {percentile(times, 95) or 0:.0f} |")
    await stop_server(client)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--threads", type=int, help="the server's torch CPU threads (default: the server's)")
    parser.add_argument("--compile", default="auto", choices=COMPILE_MODES, help="the server's --compile (auto)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="the maxTokens setting (default: the server's); random-weight models never end a line, "
        "so without a limit every completion runs to the time budget",
    )
    parser.add_argument("--key-ms", type=float, default=120.0, help="time between keystrokes (default 120)")
    parser.add_argument("--line-pause-ms", type=float, default=400.0, help="pause after each line (default 400)")
    parser.add_argument("--think-ms", type=float, default=1500.0, help="pause between steps (default 1500)")
    parser.add_argument("--accepts", type=int, default=20, help="suggestions accepted in the accept phase (20)")
    parser.add_argument("--read-ms", type=float, default=400.0, help="time a suggestion is read before accepting")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
