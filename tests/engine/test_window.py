"""The prompt window around the cursor: line-aligned, sticky, never past the cursor."""

from __future__ import annotations

import pytest

from engine.window import cursor_window

TEXT = "".join(f"line {i:04d} = compute({i})\n" for i in range(400))


def test_small_files_are_whole():
    window = cursor_window(TEXT[:500], 250)
    assert window.prefix + window.suffix == TEXT[:500] and window.prefix_start == 0


def test_window_starts_on_a_line_and_its_start_is_sticky_while_typing():
    starts = set()
    for cursor in range(6000, 6600, 7):
        window = cursor_window(TEXT, cursor, max_prefix_chars=4000, max_suffix_chars=1000, block=1024)
        assert TEXT[window.prefix_start - 1] == "\n"
        assert window.prefix == TEXT[window.prefix_start : cursor]
        assert len(window.prefix) <= 4000 and len(window.suffix) <= 1000
        assert window.suffix.endswith("\n")
        starts.add(window.prefix_start)
    assert len(starts) <= 2  # 600 characters of typing move the start at most once


def test_budget_smaller_than_a_block_never_starts_past_the_cursor():
    window = cursor_window("a" * 1000, 1000, max_prefix_chars=48, max_suffix_chars=0, block=512)
    assert window.prefix_start <= 1000 and window.prefix == "a" * (1000 - window.prefix_start)


def test_offset_outside_the_document():
    with pytest.raises(ValueError, match="outside the document"):
        cursor_window("abc", 4)
