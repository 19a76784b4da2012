"""Reading LSP messages off a byte stream, within limits, whatever the peer sends.

pygls' own loop trusts its peer: it allocates whatever `Content-Length` says (a frame
claiming 10^12 bytes ends the process with MemoryError), parses NaN into ids it cannot
write back, and treats a batch array as a single message. Here:

- a header block is at most MAX_HEADER_BYTES; a body at most MAX_MESSAGE_BYTES. A larger
  frame is skipped as it streams past (never held in memory) and answered with an error;
- the body must be a UTF-8 JSON object (JSON-RPC 2.0, one message, no batches); ids must
  be integers, strings or null;
- anything else is answered with the JSON-RPC error whose id is null (the spec's rule
  when the id cannot be known), and the connection goes on.

A `Frame` is either a message (a dict, given to the protocol) or an error to answer.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20
"""The largest message body read (a 64 MiB didOpen is already an unusually large file)."""
MAX_HEADER_BYTES = 8 * 2**10
"""Headers (Content-Length, Content-Type) take a few dozen bytes; more is not LSP."""
READ_CHUNK = 2**16

PARSE_ERROR, INVALID_REQUEST = -32700, -32600
CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*(\d{1,20})[ \t]*(?:\r\n|$)", re.IGNORECASE)
HEADER_END = b"\r\n\r\n"

ReadChunk = Callable[[], Awaitable[bytes]]
"""The next bytes of the stream (at most READ_CHUNK), waiting for at least one; b"" at its end."""


@dataclass(frozen=True)
class FrameError:
    """Something that is not a message: answered with this error (id null) and skipped."""

    code: int
    message: str

    def response(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": None, "error": {"code": self.code, "message": self.message}}


Frame = dict[str, Any] | FrameError


class MessageReader:
    """Splits a byte stream into LSP frames: headers, a blank line, Content-Length bytes of body."""

    def __init__(
        self, read: ReadChunk, max_message: int = MAX_MESSAGE_BYTES, max_header: int = MAX_HEADER_BYTES
    ) -> None:
        self._read = read
        self._buffer = bytearray()
        self._eof = False
        self.max_message, self.max_header = max_message, max_header

    async def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        chunk = await self._read()
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def next_frame(self) -> Frame | None:
        """The next message or error; None at the end of the stream (a partial frame is dropped)."""
        while True:
            end = self._buffer.find(HEADER_END)
            if end >= 0:
                break
            if len(self._buffer) > self.max_header:
                return await self._resync(f"a header block longer than {self.max_header} bytes")
            if not await self._fill():
                if self._buffer.strip():
                    log.info("the stream ended inside a frame header (%d bytes dropped)", len(self._buffer))
                return None
        header = bytes(self._buffer[:end])
        del self._buffer[: end + len(HEADER_END)]
        # The last Content-Length in the block counts, even mid-line: after a frame whose
        # length was short, the rest of its body runs into the next frame's header, and
        # this finds that frame again instead of losing every frame after it.
        matches = list(CONTENT_LENGTH.finditer(header))
        length = int(matches[-1].group(1)) if matches else None
        if length is None:
            return FrameError(INVALID_REQUEST, f"a frame without a valid Content-Length header: {header[:100]!r}")
        if length > self.max_message:
            if not await self._discard(length):
                return None
            return FrameError(
                INVALID_REQUEST, f"message of {length:,} bytes skipped: the limit is {self.max_message:,} bytes"
            )
        while len(self._buffer) < length:
            if not await self._fill():
                log.info("the stream ended inside a message body (%d of %d bytes)", len(self._buffer), length)
                return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return parse_message(body)

    async def _discard(self, length: int) -> bool:
        """Skip `length` bytes of body without keeping them; False if the stream ended first."""
        while length > 0:
            if not self._buffer and not await self._fill():
                return False
            taken = min(length, len(self._buffer))
            del self._buffer[:taken]
            length -= taken
        return True

    async def _resync(self, problem: str) -> Frame | None:
        """Drop bytes up to the next blank line: the next frame, if the peer sends one, starts there."""
        dropped = 0
        while (end := self._buffer.find(HEADER_END)) < 0:
            keep = len(HEADER_END) - 1  # a terminator split across two reads
            dropped += max(0, len(self._buffer) - keep)
            del self._buffer[:-keep]
            if not await self._fill():
                return None
        dropped += end + len(HEADER_END)
        del self._buffer[: end + len(HEADER_END)]
        return FrameError(INVALID_REQUEST, f"{problem}: {dropped:,} bytes skipped")


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON; Python's json module reads them unless told not to.
    # They come back as NaN so that where they stand (a setting, a position) is rejected by
    # that field's own check, without losing the rest of the message.
    return math.nan


def parse_message(body: bytes) -> Frame:
    """A JSON-RPC 2.0 message object, or the error that answers it."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        return FrameError(PARSE_ERROR, f"the message is not UTF-8: {e}")
    except (json.JSONDecodeError, RecursionError) as e:
        return FrameError(PARSE_ERROR, f"the message is not JSON: {e}"[:300])
    if isinstance(value, list):
        return FrameError(INVALID_REQUEST, "batch messages (JSON arrays) are not supported by LSP")
    if not isinstance(value, dict):
        return FrameError(INVALID_REQUEST, f"a message must be a JSON object, got {type(value).__name__}")
    if value.get("jsonrpc") != "2.0":
        return FrameError(INVALID_REQUEST, f'"jsonrpc" must be "2.0", got {value.get("jsonrpc")!r:.50}')
    message_id = value.get("id")
    if isinstance(message_id, bool) or not isinstance(message_id, (int, str, type(None))):
        return FrameError(INVALID_REQUEST, f'"id" must be an integer, a string or null, got {message_id!r:.50}')
    if "method" in value and not isinstance(value["method"], str):
        return FrameError(INVALID_REQUEST, f'"method" must be a string, got {value["method"]!r:.50}')
    return value
