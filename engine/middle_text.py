"""The generated middle as text, one token at a time: no token is decoded twice.

Equal to `Tokenizer.decode_infilling(tokens)` (tests/engine/test_middle_text.py checks it
against SentencePiece): each token's bytes appended, UTF-8 decoded incrementally (a
character split across byte-fallback tokens appears when it is complete). On top: the
token-healing characters are removed from the start, the text is cut before the first
stop string, and `visible` holds back what may still become a stop string or a character.
"""

from __future__ import annotations

import codecs

from engine.tokenizer import Tokenizer


class MiddleText:
    def __init__(self, tok: Tokenizer, healing: str = "", stop: tuple[str, ...] = ()) -> None:
        self.tok, self.healing = tok, healing
        self.stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._raw = ""
        """Everything decoded so far, healing included."""
        self.text = ""
        """The middle so far: healing removed, cut at a stop string."""
        self.stopped = False
        """A stop string appeared (text was cut before it)."""
        self._shown = 0

    def add(self, token: int) -> str:
        """Take one generated token; return the text that became visible with it (may be "")."""
        self._raw += self._decoder.decode(self.tok.token_bytes[token])
        if len(self._raw) < len(self.healing):
            return ""
        text = self._raw[len(self.healing) :]
        searched_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (text.find(s, searched_from) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            text = text[: min(hits)]
        self.text = text
        return self._reveal(final=self.stopped)

    def finish(self) -> str:
        """The last visible text (generation ended: nothing more to hold back)."""
        return self._reveal(final=True)

    def _reveal(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            # Hold back anything that may begin a stop string.
            for s in self.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text[:end].endswith(s[:k]):
                        end -= k
                        break
        piece = self.text[self._shown : end]
        self._shown = max(self._shown, end)
        return piece
