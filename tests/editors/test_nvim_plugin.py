"""The Neovim plugin's own logic in a real headless Neovim, no server: setup(), key fall-through,
and how an InlineCompletionItem becomes ghost text."""

from __future__ import annotations

import pytest

from tests.editors.nvim_harness import buffer_text, start_nvim, stop_nvim, wait_for


@pytest.fixture(scope="module")
def vim(tmp_path_factory):
    vim = start_nvim(tmp_path_factory.mktemp("nvim-home"))
    yield vim
    stop_nvim(vim)


def test_setup_is_idempotent_and_merges_defaults(vim):
    config = vim.exec_lua(
        """
        local codellama = require("codellama")
        codellama.setup({ keymaps = { accept = "<C-y>" }, filetypes = { "python", "lua", "c" } })
        codellama.setup({ filetypes = { "python" }, settings = { maxTokens = 8 }, keymaps = { dismiss = false } })
        return codellama.config
        """
    )
    # Each call starts from the defaults: the first call's <C-y> is gone, lists are replaced.
    assert config["filetypes"] == ["python"]
    assert config["settings"] == {"enable": True, "maxTokens": 8}
    assert config["keymaps"]["accept"] == "<Tab>"
    assert config["keymaps"]["dismiss"] is False
    assert config["keymaps"]["accept_word"] == "<M-Right>"
    assert vim.funcs.maparg("<C-y>", "i") == ""
    assert vim.funcs.maparg("<C-]>", "i") == ""
    assert vim.funcs.maparg("<Tab>", "i", False, True)["desc"] == "codellama: accept"
    autocmds = vim.api.get_autocmds({"group": "codellama"})
    assert sorted(a["event"] for a in autocmds) == ["FileType", "LspAttach", "TextYankPost"]
    assert [a["pattern"] for a in autocmds if a["event"] == "FileType"] == ["python"]
    assert vim.funcs.exists(":CodellamaToggle") == 2


def test_keys_fall_through_where_no_suggestion_is_shown(vim, tmp_path):
    vim.exec_lua('require("codellama").setup({ filetypes = { "python" } })')
    vim.command(f"edit {tmp_path / 'notes.txt'}")
    vim.command("setlocal noexpandtab tabstop=8 softtabstop=0")
    vim.input("ia<Tab>b<M-]>c<Esc>")
    # <Tab> typed a tab; <M-]> (next candidate) did what Neovim does with it unmapped.
    wait_for("the keys to be typed", lambda: vim.api.get_mode()["mode"] == "n" and buffer_text(vim).endswith("c"), 5)
    assert buffer_text(vim).startswith("a\tb")
    vim.command("bwipeout!")


ADDED_TEXT = """
local ghost = require("codellama.ghost")
local line, position, col, insert_text, range_end = ...
local range = { start = { line = 0, character = 0 }, ["end"] = { line = 0, character = range_end } }
local item = { insertText = insert_text, range = range }
local added, overwritten = ghost.added_text(item, line, position, col, "utf-16")
return { added = added, overwritten = overwritten, rejected = added == nil,
         shown = added and ghost.display_text(added, overwritten) }
"""


def added_text(vim, line: str, cursor_chars: int, insert_text: str, range_end: int | None = None):
    """What the plugin makes of an item for `line` with the cursor after `cursor_chars` characters."""
    col = len(line[:cursor_chars].encode())
    utf16 = len(line[:cursor_chars].encode("utf-16-le")) // 2
    end = utf16 if range_end is None else range_end
    return vim.exec_lua(ADDED_TEXT, line, {"line": 0, "character": utf16}, col, insert_text, end)


def test_an_item_becomes_the_text_after_the_cursor(vim):
    assert added_text(vim, "    return ", 11, "    return a + b") == {
        "added": "a + b",
        "overwritten": "",
        "shown": "a + b",
        "rejected": False,
    }


def test_positions_are_utf16_and_columns_bytes(vim):
    # "é" is 2 bytes and 1 UTF-16 unit; "😀" 4 bytes and 2 units.
    line = "s = 'é😀' + "
    result = added_text(vim, line, len(line), line + "t")
    assert result["added"] == "t"


def test_an_item_over_a_closing_bracket_shows_the_line_as_accepting_makes_it(vim):
    # `print(|)`: the item replaces up to after ")" with "print(a)".
    result = added_text(vim, "print()", 6, "print(a)", range_end=7)
    assert result == {"added": "a)", "overwritten": ")", "shown": "a", "rejected": False}


def test_an_item_that_rewrites_text_before_the_cursor_is_not_shown(vim):
    assert added_text(vim, "    retrun ", 11, "    return x") == {"rejected": True}


@pytest.mark.parametrize(
    ("text", "word", "line"),
    [
        ("foo(bar)", "foo", "foo(bar)"),
        ("  x = 1\n  y", "  x", "  x = 1"),
        ("\n    return x", "\n    ", "\n    return x"),
        ("(a, b)", "(", "(a, b)"),
        ("   ", "   ", "   "),
    ],
)
def test_accept_word_and_line_units(vim, text, word, line):
    ghost = "require('codellama.ghost')"
    assert vim.exec_lua(f"return {ghost}.next_word(...)", text) == word
    assert vim.exec_lua(f"return {ghost}.next_line(...)", text) == line
