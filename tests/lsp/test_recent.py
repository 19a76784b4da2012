"""Recent places: a small ring of the chunks the user edited, copied or left, newest first."""

from __future__ import annotations

from types import SimpleNamespace

from lsprotocol import types

from engine.context import ContextSource, build_prompt
from lsp.host import ModelHost
from lsp.recent import MAX_CHUNKS, RecentPlaces
from lsp.server import codellama_did_yank, did_change, did_open, new_session


def lines(start: int, count: int = 24) -> str:
    return "\n".join(f"line_{i} = {i}" for i in range(start, start + count))


def test_editing_one_place_refreshes_its_chunk_and_another_place_adds_one():
    recent = RecentPlaces()
    recent.edited("a", "a.py", 100, lines(88))
    recent.edited("a", "a.py", 104, lines(92))  # the same place, typed on
    assert [c.line for c in recent.chunks] == [104]
    recent.edited("a", "a.py", 400, lines(388))
    recent.edited("b", "b.py", 10, lines(1000))
    assert [(c.uri, c.line) for c in recent.chunks] == [("b", 10), ("a", 400), ("a", 104)]


def test_a_chunk_mostly_repeating_a_newer_one_is_dropped_and_the_ring_is_bounded():
    recent = RecentPlaces()
    recent.edited("a", "a.py", 100, lines(88))
    recent.visited("a", "a.py", 103, lines(91))  # 21 of 24 lines the same
    assert [c.kind for c in recent.chunks] == ["visit"]
    for i in range(MAX_CHUNKS + 5):
        recent.edited("a", "a.py", 1000 * (i + 1), lines(1000 * (i + 1)))
    assert len(recent.chunks) == MAX_CHUNKS


def test_a_jump_reports_the_place_left():
    recent = RecentPlaces()
    assert recent.moved("a", 10) is None
    assert recent.moved("a", 20) is None  # typing along
    assert recent.moved("a", 200) == ("a", 20)
    assert recent.moved("b", 5) == ("a", 200)


def test_sources_come_newest_first_with_what_they_are():
    recent = RecentPlaces()
    recent.edited("a", "a.py", 100, lines(88))
    recent.yanked("b", "b.py", "def helper():\n    return 1\n")
    [copied, edited] = recent.sources(4)
    assert copied.path == "b.py (copied)" and "def helper" in copied.text
    assert edited.path == "a.py (recently edited)"
    assert recent.sources(1) == (copied,)


def test_a_snippet_the_window_already_shows_is_not_repeated(tokenizer):
    text = lines(0, 40) + "\n"
    inside = ContextSource("a.py (recently edited)", lines(5, 10), ("recent", 1))
    outside = ContextSource("b.py", "def elsewhere():\n    return 2\n", ("b", 1))
    prompt = build_prompt(text, len(text), 40, "python", (inside, outside), tokenizer, 1024, 64, 256)
    assert "b.py" in prompt.context and "a.py" not in prompt.context


def test_the_server_keeps_edits_jumps_and_yanks_as_context():
    ls = new_session(ModelHost(shared=False))
    uri = "file:///work/project/main.py"
    body = "".join(f"value_{i} = {i}\n" for i in range(300))
    did_open(ls, types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, body)))
    at = types.Position(10, 0)
    change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text="edited_here = 1\n")
    did_change(ls, types.DidChangeTextDocumentParams(types.VersionedTextDocumentIdentifier(2, uri), [change]))
    codellama_did_yank(ls, SimpleNamespace(uri=uri, text="copied_text = 2"))  # as pygls decodes custom params
    sources = ls.context_sources(uri)
    assert [s.path for s in sources] == ["/work/project/main.py (copied)", "/work/project/main.py (recently edited)"]
    assert "edited_here = 1" in sources[1].text and "copied_text" in sources[0].text
    assert ls.status_json()["recentPlaces"] == 2
