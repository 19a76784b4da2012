from __future__ import annotations

from lsp.typed_through import TypedThrough

URI = "file:///a.py"
TEXT = "def add(a, b):\n    \n"
CURSOR = TEXT.index("\n    \n") + 5


def shown() -> TypedThrough:
    memory = TypedThrough()
    memory.remember(URI, TEXT, CURSOR, "return a + b")
    return memory


def typed(text: str) -> tuple[str, int]:
    return TEXT[:CURSOR] + text + TEXT[CURSOR:], CURSOR + len(text)


def test_typing_the_start_serves_the_rest():
    memory = shown()
    assert memory.remainder(URI, *typed("")) == "return a + b"
    assert memory.remainder(URI, *typed("ret")) == "urn a + b"
    assert memory.remainder(URI, *typed("return a +")) == " b"


def test_typing_something_else_does_not_match():
    assert shown().remainder(URI, *typed("rex")) is None


def test_typing_all_of_it_leaves_nothing():
    assert shown().remainder(URI, *typed("return a + b")) is None
    assert shown().remainder(URI, *typed("return a +  ")) is None


def test_backspace_past_the_start_does_not_match():
    text = TEXT[: CURSOR - 1] + TEXT[CURSOR:]
    assert shown().remainder(URI, text, CURSOR - 1) is None


def test_an_edit_elsewhere_invalidates():
    text, offset = typed("ret")
    assert shown().remainder(URI, "# hi\n" + text, offset + 5) is None  # before the cursor
    assert shown().remainder(URI, text + "x = 1\n", offset) is None  # after it


def test_brackets_the_editor_closed_are_allowed():
    memory = TypedThrough()
    text, offset = "print\n", 5
    memory.remember(URI, text, offset, "(a, b)")
    assert memory.remainder(URI, "print()\n", 6) == "a, b)"  # typed "(", the editor added ")"
    assert memory.remainder(URI, "print(x)\n", 6) is None  # not a bracket


def test_documents_are_separate_and_forgettable():
    memory = shown()
    assert memory.remainder("file:///other.py", *typed("r")) is None
    memory.forget(URI)
    assert memory.remainder(URI, *typed("r")) is None
    memory = shown()
    memory.clear()
    assert memory.remainder(URI, *typed("r")) is None
