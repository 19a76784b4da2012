"""Open documents, kept in LSP's own terms.

LSP lines end at "\\n", "\\r\\n" or "\\r" only (str.splitlines also splits at form feeds,
U+2028 and others, which would shift every position after one), and a position's
character counts code units of the negotiated encoding: UTF-16 by default, so an emoji
is two units and a position may even fall between its two halves.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from lsprotocol import types

LINE_BREAK = re.compile(r"\r\n|\r|\n")
UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"


MAX_OPEN_CHARS = 256 * 2**20
"""Characters of all open documents of one session together (a hostile client cannot fill RAM)."""
MAX_OPEN_DOCUMENTS = 2000


class PositionError(ValueError):
    """A position that names no place in the document."""


class DocumentTooLarge(ValueError):
    """Opening or growing a document would pass the session's memory limits."""


def code_units(text: str, encoding: str) -> int:
    """Length of text in the encoding's code units (LSP's Position.character unit)."""
    if encoding == UTF32:
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def index_from_units(line: str, units: int, encoding: str) -> tuple[int, bool]:
    """(index into line, whether `units` falls between two characters).

    Past the end of the line it clamps to the end (LSP: "defaults back to the line length").
    Inside a character (half of a UTF-16 surrogate pair, part of a UTF-8 sequence) it
    returns the index of that character and False.
    """
    if encoding == UTF32:
        return min(units, len(line)), True
    if encoding == UTF8:
        data = line.encode("utf-8", "surrogatepass")
        try:
            return len(data[:units].decode("utf-8", "surrogatepass")), True
        except UnicodeDecodeError as e:  # cut inside a multi-byte character
            return len(data[: e.start].decode("utf-8", "surrogatepass")), False
    data = line.encode("utf-16-le", "surrogatepass")
    if 2 * units >= len(data):
        return len(line), True
    # A high surrogate just before the cut and a low one just after: inside a pair.
    before, after = data[2 * units - 1] if units else 0, data[2 * units + 1]
    if 0xD8 <= before <= 0xDB and 0xDC <= after <= 0xDF:
        return len(data[: 2 * (units - 1)].decode("utf-16-le", "surrogatepass")), False
    return len(data[: 2 * units].decode("utf-16-le", "surrogatepass")), True


@dataclass(frozen=True)
class Cursor:
    """A resolved position: where it is in the text, and the line around it."""

    offset: int
    """Index into the document text (code points)."""
    line: int
    line_start: int
    """Offset of the line's first character."""
    line_before: str
    """The line's text before the cursor."""
    line_after: str
    """The line's text after the cursor, without the line break."""


@dataclass
class Document:
    uri: str
    text: str
    version: int = 0
    language_id: str = ""
    _line_starts: list[int] | None = field(default=None, repr=False)

    @property
    def line_starts(self) -> list[int]:
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in LINE_BREAK.finditer(self.text)]
        return self._line_starts

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    def line_span(self, line: int) -> tuple[int, int]:
        """(start, end) offsets of a line, the end before its line break."""
        starts = self.line_starts
        start = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        while end > start and self.text[end - 1] in "\r\n":
            end -= 1
        return start, end

    def lines_around(self, line: int, size: int) -> str:
        """`size` lines centred on `line` (fewer near the ends), from the line index: no scan of the text."""
        first = max(0, min(line - size // 2, self.line_count - size))
        last = min(self.line_count, first + size) - 1
        return self.text[self.line_span(first)[0] : self.line_span(last)[1]]

    def offset_at(self, position: types.Position, encoding: str, clamp_lines: bool = False) -> tuple[int, bool]:
        """(offset, exact) for an LSP position; see index_from_units for `exact`.

        A line past the end raises PositionError, or with clamp_lines gives the end of the
        document (for edits from clients that overshoot).
        """
        if position.line >= self.line_count:
            if clamp_lines:
                return len(self.text), True
            raise PositionError(
                f"{self.uri}: line {position.line} is past the end of the document ({self.line_count} lines)"
            )
        start, end = self.line_span(position.line)
        index, exact = index_from_units(self.text[start:end], position.character, encoding)
        return start + index, exact

    def cursor_at(self, position: types.Position, encoding: str) -> Cursor:
        """The cursor for a request; raises PositionError for a place that is not between characters."""
        offset, exact = self.offset_at(position, encoding)
        if not exact:
            raise PositionError(
                f"{self.uri}: {position.line}:{position.character} falls inside a character ({encoding} units)"
            )
        start, end = self.line_span(position.line)
        return Cursor(offset, position.line, start, self.text[start:offset], self.text[offset:end])

    def apply(self, change: types.TextDocumentContentChangeEvent, encoding: str) -> None:
        """Apply one full or incremental change from didChange."""
        if not isinstance(change, types.TextDocumentContentChangePartial):
            self.text, self._line_starts = change.text, None
            return
        start, _ = self.offset_at(change.range.start, encoding, clamp_lines=True)
        end, _ = self.offset_at(change.range.end, encoding, clamp_lines=True)
        start, end = min(start, end), max(start, end)
        old = self.text
        self.text = old[:start] + change.text + old[end:]
        # Only the lines inside the edit are new and those after it shift: a keystroke in a
        # 10 MB file must not rescan it. Unless a "\r" at an edge of the edit joins or
        # splits a "\r\n": then recount.
        joins_left = old[start - 1 : start] == "\r"
        joins_right = old[end : end + 1] == "\n" and "\r" in old[end - 1 : end] + change.text[-1:]
        if self._line_starts is None or joins_left or joins_right:
            self._line_starts = None
            return
        starts, shift = self._line_starts, len(change.text) - (end - start)
        first_after = bisect.bisect_right(starts, end)
        inside = [start + m.end() for m in LINE_BREAK.finditer(change.text)]
        kept = bisect.bisect_right(starts, start)
        self._line_starts = starts[:kept] + inside + [s + shift for s in starts[first_after:]]


@dataclass
class DocumentStore:
    """The open documents, with the order they were last used in (for prompt context)."""

    documents: dict[str, Document] = field(default_factory=dict)
    max_chars: int = MAX_OPEN_CHARS
    max_documents: int = MAX_OPEN_DOCUMENTS
    _clock: int = 0
    _last_used: dict[str, int] = field(default_factory=dict)
    _chars: int = 0

    def open(self, uri: str, text: str, version: int, language_id: str) -> Document:
        old = self.documents.get(uri)
        replaced = len(old.text) if old is not None else 0
        if old is None and len(self.documents) >= self.max_documents:
            raise DocumentTooLarge(f"{uri}: not opened: {self.max_documents} documents are open already")
        self._reserve(uri, len(text) - replaced)
        self.documents[uri] = doc = Document(uri, text, version, language_id)
        self.touch(uri)
        return doc

    def apply(self, doc: Document, change: types.TextDocumentContentChangeEvent, encoding: str) -> None:
        """Document.apply within the memory limit. A change past it closes the document (raising
        DocumentTooLarge): keeping the old text would put every later edit in the wrong place."""
        before = len(doc.text)
        if self._chars + len(change.text) > self.max_chars:  # at most this much longer afterwards
            self.close(doc.uri)
            raise DocumentTooLarge(
                f"{doc.uri}: closed: open documents would hold more than {self.max_chars:,} characters; "
                "reopen it when fewer are open to get completions in it"
            )
        doc.apply(change, encoding)
        self._chars += len(doc.text) - before

    def _reserve(self, uri: str, chars: int) -> None:
        if self._chars + chars > self.max_chars:
            raise DocumentTooLarge(
                f"{uri}: not opened: open documents would hold more than {self.max_chars:,} characters; "
                "close some to get completions in it"
            )
        self._chars += chars

    def close(self, uri: str) -> None:
        doc = self.documents.pop(uri, None)
        if doc is not None:
            self._chars -= len(doc.text)
        self._last_used.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self.documents.get(uri)

    def touch(self, uri: str) -> None:
        self._clock += 1
        self._last_used[uri] = self._clock

    def recently_used(self, exclude: str, limit: int) -> list[Document]:
        """Other open documents, most recently used first."""
        others = [d for uri, d in self.documents.items() if uri != exclude]
        others.sort(key=lambda d: self._last_used.get(d.uri, 0), reverse=True)
        return others[:limit]
