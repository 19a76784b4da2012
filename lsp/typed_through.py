"""Typed-through: when the user types the start of the completion on screen, serve the rest.

Copilot and llama.vim keep showing a suggestion while it is being typed; without this the
editor asks again at every keystroke and the suggestion flickers or changes. The memory
holds, per document, the text before and after the cursor when the completion was shown;
a later request matches when the text before the cursor only grew by a prefix of the
completion and the text after it is unchanged, except for brackets and quotes the
editor closed automatically that the rest of the completion also contains. Anything
else (backspace past the start, an edit elsewhere) does not match and the caller asks the
model again.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO_CLOSED = set(")]}>\"'`")


@dataclass(frozen=True)
class Shown:
    """A completion the client was given."""

    before: str
    """Document text before the cursor."""
    after: str
    """Document text after the cursor."""
    completion: str
    """The text inserted at the cursor (without the line's text before it)."""


class TypedThrough:
    def __init__(self) -> None:
        self._shown: dict[str, Shown] = {}

    def remember(self, uri: str, text: str, offset: int, completion: str) -> None:
        self._shown[uri] = Shown(text[:offset], text[offset:], completion)

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)

    def clear(self) -> None:
        """Forget every document's completion (the settings that made them changed)."""
        self._shown.clear()

    def remainder(self, uri: str, text: str, offset: int) -> str | None:
        """The rest of the shown completion if the user typed into it, else None."""
        shown = self._shown.get(uri)
        if shown is None:
            return None
        typed = offset - len(shown.before)
        closed = len(text) - offset - len(shown.after)  # characters the editor auto-inserted
        # Compare without slicing copies of the whole text: this runs on the event loop.
        if (
            typed < 0
            or closed < 0
            or not text.startswith(shown.before)
            or not text.endswith(shown.after)
            or not shown.completion.startswith(text[len(shown.before) : offset])
        ):
            return None
        rest = shown.completion[typed:]
        if closed and not (set(text[offset : offset + closed]) <= AUTO_CLOSED and rest.strip()):
            return None
        return rest if rest.strip() else None
