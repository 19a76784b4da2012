"""The part of a document around the cursor that goes into the prompt.

Latency grows with the prompt, so only a window around the cursor is used (about 3:1
prefix:suffix, as llama.cpp's infill does). The window starts on a line boundary and
its start only moves in steps of `block` characters: while the user types, the prefix
keeps the same beginning, so its tokens stay a common prefix of consecutive prompts and
the KV cache is reused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CursorWindow:
    prefix: str
    suffix: str
    prefix_start: int
    """Offset in the document where the prefix starts."""


def cursor_window(
    text: str, offset: int, max_prefix_chars: int = 6000, max_suffix_chars: int = 2000, block: int = 1024
) -> CursorWindow:
    if not 0 <= offset <= len(text):
        raise ValueError(f"offset {offset} is outside the document (0..{len(text)})")
    start = 0
    if offset > max_prefix_chars:
        # Round the earliest allowed start up to a block boundary, so it is sticky.
        earliest = offset - max_prefix_chars
        start = -(-earliest // block) * block
        line_start = text.find("\n", start, offset)
        start = line_start + 1 if line_start >= 0 else start
        start = min(start, offset)  # a budget under one block must not start past the cursor
    end = len(text)
    if end - offset > max_suffix_chars:
        end = offset + max_suffix_chars
        line_end = text.rfind("\n", offset, end)
        end = line_end + 1 if line_end >= 0 else end
    return CursorWindow(text[start:offset], text[offset:end], start)
