from __future__ import annotations

import random

import pytest
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from lsp.documents import (
    UTF8,
    UTF16,
    UTF32,
    Document,
    DocumentStore,
    PositionError,
    code_units,
    index_from_units,
)

LINES = ["plain ascii", "emoji 😀 and 🐍 here", "漢字とかな", "naïve café", "", "x😀"]


@pytest.mark.parametrize("encoding", [UTF8, UTF16, UTF32])
@pytest.mark.parametrize("line", LINES)
def test_conversions_agree_with_pygls_position_codec(encoding, line):
    codec = PositionCodec(encoding)
    for index in range(len(line) + 1):
        units = code_units(line[:index], encoding)
        assert units == codec.client_num_units(line[:index])
        assert index_from_units(line, units, encoding) == (index, True)
        if index < len(line):  # pygls' conversion back (it clamps past the end differently)
            position = codec.position_from_client_units([line + "\n"], types.Position(0, units))
            assert position.character == index


def test_positions_inside_a_character():
    line = "a😀b"
    assert index_from_units(line, 2, UTF16) == (1, False)  # between the surrogates
    assert index_from_units(line, 3, UTF16) == (2, True)
    for inside in (2, 3, 4):  # inside the four UTF-8 bytes
        assert index_from_units(line, inside, UTF8) == (1, False)
    assert index_from_units(line, 5, UTF8) == (2, True)


def test_past_the_end_of_the_line_clamps():
    for encoding in (UTF8, UTF16, UTF32):
        assert index_from_units("ab😀", 999, encoding) == (3, True)


def test_lone_surrogates_do_not_crash():
    line = "a\ud800b"  # JSON can carry one; Python keeps it as a code point
    for encoding in (UTF8, UTF16, UTF32):
        assert code_units(line, encoding) >= 3
        assert index_from_units(line, code_units(line, encoding), encoding) == (3, True)


def test_lsp_line_breaks_only():
    doc = Document("file:///a", "one\r\ntwo\x0cstill two\u2028too\rthree\nfour")
    assert doc.line_count == 4
    assert [doc.text[slice(*doc.line_span(i))] for i in range(4)] == [
        "one",
        "two\x0cstill two\u2028too",
        "three",
        "four",
    ]
    cursor = doc.cursor_at(types.Position(2, 3), UTF16)
    assert (cursor.line_before, cursor.line_after, cursor.offset) == ("thr", "ee", doc.text.index("three") + 3)


def test_cursor_errors_name_the_problem():
    doc = Document("file:///a", "x😀\n")
    with pytest.raises(PositionError, match="past the end"):
        doc.cursor_at(types.Position(2, 0), UTF16)
    with pytest.raises(PositionError, match="inside a character"):
        doc.cursor_at(types.Position(0, 2), UTF16)
    assert doc.cursor_at(types.Position(1, 0), UTF16).offset == len(doc.text)  # the empty last line


@pytest.mark.parametrize("encoding", [UTF8, UTF16, UTF32])
def test_incremental_changes(encoding):
    doc = Document("file:///a", "héllo 😀 world\nsecond\n")
    start = code_units("héllo 😀 ", encoding)
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(0, start), types.Position(1, 3)), text="there\nthe "
    )
    doc.apply(change, encoding)
    assert doc.text == "héllo 😀 there\nthe ond\n"
    doc.apply(types.TextDocumentContentChangePartial(range=types.Range(types.Position(9, 0), types.Position(9, 0)),
                                                      text="tail"), encoding)  # fmt: skip
    assert doc.text.endswith("ond\ntail")
    doc.apply(types.TextDocumentContentChangeWholeDocument(text="new"), encoding)
    assert (doc.text, doc.line_count) == ("new", 1)


def test_recently_used_order():
    store = DocumentStore()
    for name in "abc":
        store.open(f"file:///{name}", name, 1, "python")
    store.touch("file:///a")
    assert [d.uri for d in store.recently_used("file:///c", 5)] == ["file:///a", "file:///b"]
    assert [d.uri for d in store.recently_used("file:///a", 1)] == ["file:///c"]
    store.close("file:///b")
    assert store.get("file:///b") is None


def test_line_index_stays_right_through_random_edits():
    # Edits update the line index in place (it is built by the position lookups of each edit);
    # it must equal a fresh scan after each one.
    rng = random.Random(0)
    pieces = ["a", "bc", "\n", "\r\n", "\r", "😀", " ", "\n\n", "xyz\r"]
    doc = Document("file:///r", "start\nof\r\nthe\rtext\n")
    for _ in range(400):
        line = rng.randrange(doc.line_count + 1)
        position = types.Position(line, rng.randrange(6))
        end = types.Position(min(line + rng.randrange(2), doc.line_count), rng.randrange(6))
        new_text = "".join(rng.choice(pieces) for _ in range(rng.randrange(3)))
        doc.apply(types.TextDocumentContentChangePartial(range=types.Range(position, end), text=new_text), UTF16)
        assert doc.line_starts == Document("file:///fresh", doc.text).line_starts
