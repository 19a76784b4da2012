"""The places a user was just working: recent edits, yanks and the places left by a jump.

Other open documents are a weak guess at what matters; the lines the user edited a minute
ago, copied, or was looking at before jumping here are a strong one (llama.vim keeps a ring
of such chunks; Continue uses recent edits). A session keeps a small ring of them, newest
first: an edit near the last chunk of the same document refreshes it instead of adding one,
and a chunk that mostly repeats another replaces it. They lend the prompt snippets, before
other documents, within the same context budget; the prompt builder skips a chunk its own
window already holds.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from engine.context import ContextSource

CHUNK_LINES = 24
"""Lines kept around an edit or a visit (a snippet's size)."""
MAX_CHUNKS = 16
SAME_PLACE_LINES = CHUNK_LINES // 2
"""An edit this close to the newest chunk of its document refreshes that chunk."""
OVERLAP = 0.5
"""A chunk sharing more than this share of its lines with a newer one is dropped."""
JUMP_LINES = CHUNK_LINES
"""A cursor that moves farther than this (or to another document) leaves a place worth keeping."""
KIND_WORDS = {"edit": "recently edited", "yank": "copied", "visit": "recently viewed"}


@dataclass
class Chunk:
    uri: str
    path: str
    """As shown to the model (relative to the workspace when possible)."""
    line: int
    """The line the chunk is centred on (-1 for a yank, which has no place)."""
    text: str
    kind: str
    """"edit", "yank" or "visit"."""
    serial: int = 0


class RecentPlaces:
    def __init__(self, max_chunks: int = MAX_CHUNKS) -> None:
        self.chunks: deque[Chunk] = deque()
        self.max_chunks = max_chunks
        self._serial = itertools.count(1)
        self._cursor: tuple[str, int] | None = None

    def edited(self, uri: str, path: str, line: int, text: str) -> None:
        """An edit at `line`; text: the lines around it now."""
        self._add(Chunk(uri, path, line, text, "edit"))

    def yanked(self, uri: str, path: str, text: str) -> None:
        """Text the user copied (the editor tells: codellama/didYank)."""
        if text.strip():
            self._add(Chunk(uri, path, -1, "\n".join(text.split("\n")[:CHUNK_LINES]), "yank"))

    def visited(self, uri: str, path: str, line: int, text: str) -> None:
        """A place the cursor left (see moved); text: the lines around it."""
        self._add(Chunk(uri, path, line, text, "visit"))

    def moved(self, uri: str, line: int) -> tuple[str, int] | None:
        """The cursor is at `line` of `uri` (a completion request): the place it left, if it jumped."""
        previous, self._cursor = self._cursor, (uri, line)
        if previous is not None and (previous[0] != uri or abs(previous[1] - line) > JUMP_LINES):
            return previous
        return None

    def forget(self, uri: str) -> None:
        """A closed document: keep its chunks (what was written there still matters), but not the cursor."""
        if self._cursor and self._cursor[0] == uri:
            self._cursor = None

    def _add(self, chunk: Chunk) -> None:
        chunk.serial = next(self._serial)
        newest = self.chunks[0] if self.chunks else None
        if newest and newest.uri == chunk.uri and newest.kind == chunk.kind and chunk.line >= 0:
            if abs(newest.line - chunk.line) <= SAME_PLACE_LINES:
                self.chunks.popleft()  # the same place, worked on again: refresh it
        mine = set(chunk.text.split("\n"))
        self.chunks = deque(c for c in self.chunks if not mostly_same(mine, c.text))
        self.chunks.appendleft(chunk)
        while len(self.chunks) > self.max_chunks:
            self.chunks.pop()

    def sources(self, limit: int) -> tuple[ContextSource, ...]:
        """Up to `limit` chunks as context sources, newest first (the prompt builder drops any
        that its window already holds)."""
        return tuple(
            ContextSource(f"{c.path} ({KIND_WORDS[c.kind]})", c.text, ("recent", c.serial))
            for c in itertools.islice(self.chunks, limit)
        )


def mostly_same(lines: set[str], text: str) -> bool:
    other = set(text.split("\n"))
    smaller = min(len(lines), len(other)) or 1
    return len(lines & other) / smaller > OVERLAP
