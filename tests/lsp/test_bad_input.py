"""Bad input never takes the server down: each gets an empty answer (or an LSP error), and a
normal request right after it still works. (Malformed JSON and requests before
`initialize` need a raw connection: tests/lsp/test_raw_protocol.py.)"""

from __future__ import annotations

import time

import pytest
from lsprotocol import types

from lsp.documents import code_units
from tests.lsp.helpers import SCRIPT, encoding, inline, insert, open_document, position, replace_all, status

pytestmark = pytest.mark.asyncio(loop_scope="session")

FUNCTION = "def add(a, b):\n    \n"
BODY = types.Position(1, 4)


async def still_works(client, uri: str) -> None:
    """A normal request on a fresh document gets the normal completion."""
    fresh = uri.replace(".py", "_after.py")
    open_document(client, fresh, FUNCTION)
    [item] = await inline(client, fresh, BODY)
    assert item.insert_text == "    " + SCRIPT
    assert (await status(client))["state"] == "ready"


async def test_unknown_document(client, uri):
    assert await inline(client, "file:///never/opened.py", BODY) == []
    insert(client, "file:///never/opened.py", BODY, "x")  # a change to it is ignored
    client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier("file:///nope.py")))
    await still_works(client, uri)


async def test_closed_document(client, uri):
    open_document(client, uri, FUNCTION)
    client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    assert await inline(client, uri, BODY) == []
    await still_works(client, uri)


async def test_position_past_the_end_of_the_line_is_clamped(client, uri):
    open_document(client, uri, FUNCTION)
    [item] = await inline(client, uri, types.Position(1, 400))  # LSP: "defaults back to the line length"
    assert item.range.end == BODY and item.insert_text == "    " + SCRIPT
    await still_works(client, uri)


async def test_position_past_the_end_of_the_file(client, uri):
    open_document(client, uri, FUNCTION)
    assert await inline(client, uri, types.Position(3, 0)) == []
    assert await inline(client, uri, types.Position(2**31 - 1, 2**31 - 1)) == []
    await still_works(client, uri)


async def test_position_inside_a_character(client, uri):
    # Between the two UTF-16 halves of an emoji (VS Code), or inside its UTF-8 bytes (Neovim).
    text = 'def add(a, b):\n    s = "😀"\n'
    open_document(client, uri, text)
    before_emoji = position(client, text, text.index("😀"))
    assert code_units("😀", encoding(client)) > 1
    inside = types.Position(1, before_emoji.character + 1)
    assert await inline(client, uri, inside) == []
    await still_works(client, uri)


async def test_nul_bytes(client, uri):
    text = "def add(a, b):\n    x = '\x00\x00'\n    \n"
    open_document(client, uri, text)
    [item] = await inline(client, uri, types.Position(2, 4))
    assert item.insert_text == "    " + SCRIPT
    await still_works(client, uri)


async def test_edits_that_overshoot_the_document(client, uri):
    open_document(client, uri, FUNCTION)
    insert(client, uri, types.Position(99, 99), "# appended\n")  # past the end: appended at the end
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(1, 99), types.Position(0, 0)),
        text="",  # reversed range
    )
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(types.VersionedTextDocumentIdentifier(version=9, uri=uri), [change])
    )
    await still_works(client, uri)


async def test_a_ten_megabyte_document(client, uri):
    lines = [f"value_{i} = {i} * 2" for i in range(600_000)]
    text = "\n".join(lines) + "\ndef add(a, b):\n    \n"
    assert len(text) > 10_000_000
    started = time.perf_counter()
    open_document(client, uri, text)
    [item] = await inline(client, uri, types.Position(len(lines) + 1, 4))
    assert item.insert_text == "    " + SCRIPT
    insert(client, uri, types.Position(3, 0), "# an edit near the top\n")
    [item] = await inline(client, uri, types.Position(len(lines) + 2, 4))
    assert item.insert_text == "    " + SCRIPT
    replace_all(client, uri, FUNCTION)  # full sync of a small text again frees the big one
    [item] = await inline(client, uri, BODY)
    assert item.insert_text == "    " + SCRIPT
    assert time.perf_counter() - started < 60
    await still_works(client, uri)


async def test_a_lone_surrogate_costs_nothing_elsewhere(client, uri):
    """Half of a UTF-16 pair is valid JSON, and editors send it; UTF-8 (and SentencePiece) cannot
    encode it. Open in another document, it once broke every completion until it was closed."""
    broken = uri.replace(".py", "_broken.py")
    open_document(client, broken, "label = 'caf\ud800'\ndef add(a, b):\n    \n")
    [item] = await inline(client, broken, types.Position(2, 4))
    assert item.insert_text == "    " + SCRIPT  # in the document itself, too
    open_document(client, uri, FUNCTION)
    [item] = await inline(client, uri, BODY)
    assert item.insert_text == "    " + SCRIPT
    assert (await status(client))["failed"] == 0
    await still_works(client, uri)


async def test_windows_line_endings_and_form_feeds(client, uri):
    # LSP lines end at \n, \r\n and \r only: a form feed (as in some C and Python sources)
    # must not shift the lines after it, as str.splitlines would.
    text = "import os\r\n\x0c\r\ndef add(a, b):\r\n    \r\n"
    open_document(client, uri, text)
    [item] = await inline(client, uri, types.Position(3, 4))
    assert item.insert_text == "    " + SCRIPT
    assert item.range == types.Range(types.Position(3, 0), types.Position(3, 4))
    await still_works(client, uri)
