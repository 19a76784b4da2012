"""Framing and JSON-RPC parsing: whatever bytes arrive, memory stays bounded and the next
good frame is still read."""

from __future__ import annotations

import json

import pytest

from lsp.transport import INVALID_REQUEST, PARSE_ERROR, FrameError, MessageReader, parse_message

pytestmark = pytest.mark.asyncio


class Feed:
    """A byte stream in chunks, counting what the reader has pulled out of it."""

    def __init__(self, *chunks: bytes, chunk_size: int = 4096) -> None:
        data = b"".join(chunks)
        self.chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
        self.read_bytes = 0

    async def read(self) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        self.read_bytes += len(chunk)
        return chunk


class EndlessBody:
    """A peer that announced a huge body and streams it: it produces bytes as they are asked for."""

    def __init__(self, header: bytes, total: int) -> None:
        self.pending, self.left, self.read_bytes = header, total, 0

    async def read(self) -> bytes:
        if self.pending:
            chunk, self.pending = self.pending, b""
            return chunk
        if self.left <= 0:
            return b""
        n = min(65536, self.left)
        self.left -= n
        self.read_bytes += n
        return b"x" * n


def frame(message: dict | bytes) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


STATUS = {"jsonrpc": "2.0", "id": 7, "method": "codellama/status"}


async def frames(reader: MessageReader) -> list:
    out = []
    while (f := await reader.next_frame()) is not None:
        out.append(f)
    return out


async def test_a_frame_is_read_whatever_the_chunking():
    for size in (1, 3, 17, 4096):
        feed = Feed(frame(STATUS), frame(STATUS), chunk_size=size)
        assert await frames(MessageReader(feed.read)) == [STATUS, STATUS]


async def test_an_oversized_frame_is_skipped_without_being_held():
    """A body over the limit streams past in chunks: the reader never holds more than a chunk of it."""
    huge = 10 * 2**20
    reader = MessageReader(EndlessBody(b"Content-Length: %d\r\n\r\n" % huge, huge).read, max_message=2**20)
    first = await reader.next_frame()
    assert isinstance(first, FrameError) and first.code == INVALID_REQUEST and "10,485,760 bytes" in first.message
    assert len(reader._buffer) <= 65536
    assert await reader.next_frame() is None


async def test_a_frame_claiming_a_terabyte_ends_with_the_stream_not_memory():
    source = EndlessBody(b"Content-Length: 1000000000000\r\n\r\n", 3 * 2**20)  # then the peer hangs up
    reader = MessageReader(source.read)
    assert await reader.next_frame() is None
    assert source.read_bytes == 3 * 2**20 and len(reader._buffer) == 0


async def test_the_next_frame_after_an_oversized_one_is_read():
    big = frame(b"{" + b" " * 5000 + b"}")
    reader = MessageReader(Feed(big, frame(STATUS)).read, max_message=1000)
    got = await frames(reader)
    assert isinstance(got[0], FrameError) and got[1] == STATUS


async def test_garbage_and_headers_without_a_length_are_answered_and_skipped():
    reader = MessageReader(Feed(b"hello there\r\n\r\n", b"Content-Type: x\r\n\r\n", frame(STATUS)).read)
    first, second, third = await frames(reader)
    assert isinstance(first, FrameError) and isinstance(second, FrameError) and third == STATUS


async def test_a_header_block_without_end_is_dropped_in_bounded_memory():
    reader = MessageReader(Feed(b"A" * 200_000, b"\r\n\r\n", frame(STATUS)).read, max_header=1024)
    first = await reader.next_frame()
    assert isinstance(first, FrameError) and "header block" in first.message
    assert await reader.next_frame() == STATUS


async def test_a_short_content_length_loses_only_that_frame():
    body = json.dumps(STATUS).encode()
    short = b"Content-Length: %d\r\n\r\n" % (len(body) // 2) + body  # the rest runs into the next header
    got = await frames(MessageReader(Feed(short, frame(STATUS), frame(STATUS)).read))
    assert isinstance(got[0], FrameError) and got[-2:] == [STATUS, STATUS]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x"', PARSE_ERROR, "not JSON"),
        (b"\xff\xfe{}", PARSE_ERROR, "not UTF-8"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "x"}]', INVALID_REQUEST, "batch"),
        (b'"a string"', INVALID_REQUEST, "JSON object"),
        (b'{"jsonrpc": "2.0", "id": NaN, "method": "x"}', INVALID_REQUEST, '"id"'),
        (b'{"jsonrpc": "2.0", "id": Infinity, "method": "x"}', INVALID_REQUEST, '"id"'),
        (b'{"jsonrpc": "2.0", "id": true, "method": "x"}', INVALID_REQUEST, '"id"'),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "x"}', INVALID_REQUEST, '"id"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', INVALID_REQUEST, '"method"'),
        (b'{"id": 1, "method": "x"}', INVALID_REQUEST, '"jsonrpc"'),
        (b"[" * 100_000, PARSE_ERROR, "not JSON"),
    ],
)
async def test_bad_messages_get_the_json_rpc_error_with_id_null(body, code, words):
    error = parse_message(body)
    assert isinstance(error, FrameError) and error.code == code and words in error.message
    response = error.response()
    assert response["id"] is None and json.loads(json.dumps(response, allow_nan=False)) == response


async def test_nan_inside_params_reaches_the_field_that_rejects_it():
    message = parse_message(b'{"jsonrpc": "2.0", "method": "x", "params": {"maxTokens": NaN}}')
    assert isinstance(message, dict) and message["params"]["maxTokens"] != message["params"]["maxTokens"]
