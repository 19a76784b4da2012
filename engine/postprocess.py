"""From the model's raw middle to the text the editor shows.

The fixes for what users of Copilot, llm-ls, llama.vim, Continue and Tabby complain about
most: suggestions that repeat the code after the cursor, repeated lines, brackets the
editor already closed appearing twice, wrong indentation, and suggestions that run on
into the next function. Everything here is a pure function of strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A line ending with one of these opens a block: the completion may continue on new lines.
BLOCK_OPENERS = re.compile(r"(?:[:{(\[]|=>|->|\bdo|\bthen|\bbegin|\belse)\s*$")
# Lines that close a block: legitimately repeated ("}" then "}"), kept when they end one.
BLOCK_CLOSERS = re.compile(r"^\s*(?:[)\]}]|end\b|fi\b|done\b|esac\b|endif\b|endfunction\b)")
# A short unit repeated at least 4 times in a row within a line: `n-n-n-n-`, `b*b*b*b*`,
# `return a + breturn a + b...`: a model stuck in a loop, never what a person writes (a
# run under MIN_RUN characters, such as `[0, 0, 0, 0]`, is left alone).
REPEATED_UNIT = re.compile(r"(.{1,40}?)\1{3,}")
MIN_RUN = 16
# What editors insert automatically after the cursor: the completion may run over them.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class CursorContext:
    """The lines around the cursor that post-processing compares the completion with."""

    line_before: str
    """The cursor's line before the cursor."""
    line_after: str = ""
    """The cursor's line after the cursor."""
    previous_line: str = ""
    """The last non-blank line above the cursor's line."""
    next_line: str = ""
    """The first non-blank line below the cursor's line."""
    indent_unit: str = "    "
    """One level of indentation in this document."""

    @classmethod
    def around(cls, text: str, offset: int, line_start: int, line_end: int) -> CursorContext:
        before = text[max(0, line_start - 4000) : line_start].splitlines()
        after = text[line_end : line_end + 4000].splitlines()
        return cls(
            line_before=text[line_start:offset],
            line_after=text[offset:line_end],
            previous_line=next((s for s in reversed(before) if s.strip()), ""),
            next_line=next((s for s in after if s.strip()), ""),
            indent_unit=indent_unit(before[-200:]),
        )


@dataclass(frozen=True)
class Edit:
    """What to insert at the cursor."""

    text: str
    """Inserted at the cursor."""
    replace: int = 0
    """Characters after the cursor (on its line) that the insertion replaces: closing
    brackets the completion also contains, so they do not appear twice."""


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_unit(lines: list[str]) -> str:
    """The document's indentation step: a tab, or the smallest space indentation seen."""
    widths = set()
    for line in lines:
        lead = indent_of(line)
        if lead.startswith("\t") and line.strip():
            return "\t"
        if lead and line.strip():
            widths.add(len(lead))
    return " " * min(min(widths), 8) if widths else "    "


def wants_multiline(ctx: CursorContext, mode: str) -> bool:
    """One line when text follows the cursor; several at the start of a block ("auto")."""
    if mode in ("always", "never"):
        return mode == "always"
    if ctx.line_after.strip():
        return False
    if ctx.line_before.strip():
        return bool(BLOCK_OPENERS.search(ctx.line_before))
    return bool(BLOCK_OPENERS.search(ctx.previous_line))


def is_repetition(line: str, previous: str) -> bool:
    """A line that repeats the one before it: the model looping (not "}" after "}")."""
    text = line.strip()
    return (
        text == previous.strip() and len(text) >= 4 and any(c.isalnum() for c in text) and not BLOCK_CLOSERS.match(text)
    )


def repetition_start(line: str) -> int | None:
    """Where a degenerate in-line repetition begins (after its first copy), or None."""
    for match in REPEATED_UNIT.finditer(line):
        unit = match.group(1)
        if len(match.group(0)) >= MIN_RUN and any(c.isalnum() for c in unit):
            return match.start() + len(unit)
    return None


def cut_repetitions(lines: list[str]) -> list[str]:
    """Lines up to the first degenerate in-line repetition, which keeps one copy of its unit."""
    for i, line in enumerate(lines):
        cut = repetition_start(line)
        if cut is not None:
            return [*lines[:i], line[:cut]]
    return lines


def normalize_indentation(lines: list[str], ctx: CursorContext) -> list[str]:
    """Use the document's tabs or spaces, and don't indent twice at the start of a line.

    When the editor already indented the empty line (line_before is whitespace), a model
    that also starts with whitespace would double it; the extra lead is taken off every
    line, so the block keeps its shape.
    """
    unit = ctx.indent_unit
    first_is_line_start = not ctx.line_before.strip()

    def restyle(line: str) -> str:
        lead = indent_of(line)
        if unit == "\t" and " " in lead:
            lead = lead.replace(" " * 4, "\t")
        elif unit != "\t" and "\t" in lead:
            lead = lead.replace("\t", unit)
        return lead + line[len(indent_of(line)) :]

    lines = [lines[0] if i == 0 and not first_is_line_start else restyle(s) for i, s in enumerate(lines)]
    lead = indent_of(lines[0])
    if first_is_line_start and lead and lines[0].strip():
        expected = indent_of(ctx.previous_line)
        if BLOCK_OPENERS.search(ctx.previous_line):
            expected += unit
        if len(ctx.line_before) >= len(expected) and len(ctx.line_before) + len(lead) > len(expected):
            lines = [lines[0][len(lead) :]] + [s[len(lead) :] if s.startswith(lead) else s for s in lines[1:]]
    return lines


def opener_indent(first_line: str, ctx: CursorContext) -> int | None:
    """Indentation of the line that opened the block the completion fills, if one just did."""
    if BLOCK_OPENERS.search(first_line):
        return len(indent_of(first_line))
    if not ctx.line_before.strip() and BLOCK_OPENERS.search(ctx.previous_line):
        return len(indent_of(ctx.previous_line))
    return None


def cut_index(lines: list[str], ctx: CursorContext, multiline: bool, max_lines: int) -> int | None:
    """Index of the first completion line to drop, or None to keep them all.

    Drops from where the completion repeats the next line of the document, repeats the
    line before it, or leaves its block: after a block opener, at the first line indented
    no deeper than the opener (a closing "}" or "end" there is kept); elsewhere, at the
    first line indented less than the completion's first line.
    """
    full = [ctx.line_before + lines[0], *lines[1:]]
    at_line_start = not ctx.line_before.strip()
    next_line = ctx.next_line.strip()
    previous = ctx.previous_line
    opener = opener_indent(full[0], ctx)
    base = None
    for i, line in enumerate(full):
        if not lines[i].strip():
            continue
        if (next_line and line.strip() == next_line) or is_repetition(line, previous):
            return i
        previous = line
        if not multiline or (i == 0 and (not at_line_start or BLOCK_OPENERS.search(line))):
            continue  # the first line continues the cursor's line, or opens the block itself
        indent = len(indent_of(line))
        if opener is not None and indent <= opener:
            if BLOCK_CLOSERS.match(line):
                return i + 1 if i + 1 < len(full) else None
            return i
        if opener is None and base is None:
            base = indent
        elif opener is None and indent < base:
            return i
    return max_lines if len(lines) > max_lines else None


OPENER_OF = {")": "(", "]": "[", "}": "{"}
QUOTES = "\"'`"


def unmatched_closers(text: str) -> str:
    """The closing brackets and quotes in text that close nothing opened inside it, in order.

    A quote counts when text holds an odd number of it (its last one closes a string the
    document opened before the cursor).
    """
    stack: list[str] = []
    found: list[tuple[int, str]] = []
    for i, c in enumerate(text):
        if c in "([{":
            stack.append(c)
        elif c in OPENER_OF:
            if stack and stack[-1] == OPENER_OF[c]:
                stack.pop()
            else:
                found.append((i, c))
    found += [(text.rindex(q), q) for q in QUOTES if text.count(q) % 2]
    return "".join(c for _, c in sorted(found))


def trim_auto_closed(text: str, line_after: str) -> tuple[str, int]:
    """(text, characters after the cursor to replace) so closing brackets are not doubled.

    The range covers the leading characters after the cursor that the completion closes
    itself: "a, b)" before ")" replaces it, "len(x)" before ")" does not (that ")" closes
    the user's own bracket).
    """
    rest = line_after.rstrip()
    if not rest or "\n" in text:
        return text, 0
    closers = unmatched_closers(text)
    replace = 0
    while replace < min(len(rest), len(closers)) and rest[replace] == closers[replace]:
        replace += 1
    return text, replace


def finish(raw: str, ctx: CursorContext, multiline: bool, max_lines: int) -> Edit | None:
    """The edit to show for the model's raw middle, or None when nothing useful is left."""
    text = CONTROL_CHARS.sub("", raw.replace("\r\n", "\n").replace("\r", "\n"))
    # U+FFFD: the model wrote bytes that are not UTF-8. Never show the "?" box.
    text = text.replace("\ufffd", "")
    if not multiline:
        text = text.split("\n", 1)[0]
    lines = normalize_indentation(cut_repetitions(text.split("\n")), ctx)
    kept = lines[: cut_index(lines, ctx, multiline, max_lines)]
    text = "\n".join(line.rstrip() for line in kept).rstrip()
    if not text.strip():
        return None
    text, replace = trim_auto_closed(text, ctx.line_after)
    if not text.strip() or (replace and text == ctx.line_after[:replace]):
        return None
    return Edit(text, replace)


def enough(raw: str, ctx: CursorContext, multiline: bool, max_lines: int) -> bool:
    """While streaming: True once finish() would cut what has been generated (stop early)."""
    last_line = raw[raw.rfind("\n") + 1 :]
    if repetition_start(last_line[-4 * 40 - MIN_RUN :]) is not None:  # looping: certain already
        return True
    if not multiline:
        return "\n" in raw
    complete = raw.split("\n")[:-1]
    if not complete:
        return False
    if len(complete) > max_lines:
        return True
    cut = cut_index(normalize_indentation(complete, ctx), ctx, multiline, max_lines)
    return cut is not None and cut < len(complete)
