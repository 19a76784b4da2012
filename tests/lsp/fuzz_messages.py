"""Seeded hostile traffic for the server: broken frames, broken JSON, wrong types everywhere.

`fuzz_frames(rng, n)` yields raw bytes to write to the server's input: mostly LSP messages
with one field mutated (a wrong type, NaN, a huge or negative number, a lone surrogate,
a missing member), some broken at the JSON-RPC level (batches, bad ids, requests to
notification methods) and some at the framing level (no Content-Length, garbage, a
length shorter than the body). Every document it opens it also closes, most of the time, so memory
should come back.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

URIS = [f"file:///fuzz/doc{i}.py" for i in range(6)]
METHODS = [
    "textDocument/didOpen",
    "textDocument/didChange",
    "textDocument/didClose",
    "textDocument/inlineCompletion",
    "textDocument/completion",
    "workspace/didChangeConfiguration",
    "workspace/executeCommand",
    "codellama/status",
    "$/cancelRequest",
    "$/setTrace",
    "textDocument/hover",
    "no/such/method",
]
ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**63,
    -(2**70),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "\ud800",
    "x" * 300,
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": None}},
]


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def dumps(message: Any) -> bytes:
    # allow_nan: the fuzzer sends what Python's json writes for NaN (not JSON, but seen in the wild).
    return json.dumps(message, allow_nan=True).encode("utf-8", "surrogatepass")


def position(rng: random.Random) -> dict:
    return {"line": rng.randint(0, 30), "character": rng.randint(0, 80)}


def document_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.05:
        return "x = 1  # " + "\ud800" + "\n"  # a lone surrogate
    if kind < 0.08:
        return "y" * rng.randint(100_000, 400_000)  # one long line
    lines = [f"def f{i}(a, b):\n    return a + {i}\n" for i in range(rng.randint(1, 40))]
    return "".join(lines)


def valid_params(method: str, rng: random.Random) -> Any:
    uri = rng.choice(URIS)
    if method == "textDocument/didOpen":
        return {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": document_text(rng)}}
    if method == "textDocument/didChange":
        start = position(rng)
        change = {"range": {"start": start, "end": start}, "text": rng.choice(["a", "\n    ", "", "é😀"])}
        return {"textDocument": {"uri": uri, "version": rng.randint(2, 1000)}, "contentChanges": [change]}
    if method == "textDocument/didClose":
        return {"textDocument": {"uri": uri}}
    if method in ("textDocument/inlineCompletion", "textDocument/completion"):
        params = {"textDocument": {"uri": uri}, "position": position(rng)}
        if method == "textDocument/inlineCompletion":
            params["context"] = {"triggerKind": rng.choice([1, 2])}
        return params
    if method == "workspace/didChangeConfiguration":
        return {"settings": {"codellama": {"maxTokens": rng.choice([8, 16]), "timeBudgetMs": 300}}}
    if method == "workspace/executeCommand":
        return {"command": "codellama.accept", "arguments": [{"id": "nope"}]}
    if method == "$/cancelRequest":
        return {"id": rng.randint(1, 50)}
    if method == "$/setTrace":
        return {"value": "off"}
    return {}


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """The same structure with one member replaced, dropped or added."""
    if isinstance(value, dict) and value and depth < 6:
        key = rng.choice(sorted(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.3:
            out["extra" + str(rng.randint(0, 9))] = rng.choice(ODD_VALUES)
        elif roll < 0.6:
            out[key] = mutate(value[key], rng, depth + 1)
        else:
            out[key] = rng.choice(ODD_VALUES)
        return out
    if isinstance(value, list) and value and depth < 6:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = mutate(out[i], rng, depth + 1)
        return out
    return rng.choice(ODD_VALUES)


def protocol_breakage(rng: random.Random, next_id: int) -> bytes:
    """Valid JSON, invalid JSON-RPC or LSP framing."""
    choice = rng.randrange(12)
    if choice == 0:
        return frame(b"[" + dumps({"jsonrpc": "2.0", "id": next_id, "method": "codellama/status"}) + b"]")
    if choice == 1:
        return frame(b'{"jsonrpc": "2.0", "id": NaN, "method": "codellama/status"}')
    if choice == 2:
        return frame(b'{"jsonrpc": "2.0", "id": Infinity, "method": "codellama/status"}')
    if choice == 3:
        return frame(dumps({"jsonrpc": "2.0", "id": {"x": 1}, "method": "codellama/status"}))
    if choice == 4:  # a notification method called as a request
        params = valid_params("textDocument/didClose", rng)
        return frame(dumps({"jsonrpc": "2.0", "id": next_id, "method": "textDocument/didClose", "params": params}))
    if choice == 5:
        return frame(b'{"jsonrpc": "2.0", "method": "x", ')  # truncated JSON
    if choice == 6:
        return frame(b"\xff\xfe\x00garbage")  # not UTF-8
    if choice == 7:
        return b"Content-Type: text/plain\r\n\r\n"  # no length
    if choice == 8:
        return b"this is not a header at all\r\n\r\n"
    if choice == 9:  # claims less than it sends: the rest runs into the next frame's header
        body = dumps({"jsonrpc": "2.0", "id": next_id, "method": "codellama/status"})
        return b"Content-Length: %d\r\n\r\n" % (len(body) // 2) + body
    if choice == 10:
        return frame(dumps({"jsonrpc": "1.0", "id": next_id, "method": "codellama/status"}))
    return frame(dumps({"jsonrpc": "2.0", "id": next_id, "method": "initialize", "params": {"capabilities": {}}}))


def fuzz_frames(rng: random.Random, count: int) -> Iterator[bytes]:
    """`count` frames of hostile traffic (deterministic for a seeded rng)."""
    for i in range(count):
        roll = rng.random()
        if roll < 0.12:
            yield protocol_breakage(rng, 10_000 + i)
            continue
        method = rng.choice(METHODS)
        params = valid_params(method, rng)
        if roll < 0.6:
            params = mutate(params, rng)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        is_request = not method.startswith(("textDocument/did", "workspace/didChange", "$/"))
        if is_request:
            message["id"] = 10_000 + i
        yield frame(dumps(message))
    for uri in URIS:  # close what is open, so memory can return to where it started
        yield frame(
            dumps({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}})
        )
