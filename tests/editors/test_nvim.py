"""The Neovim plugin in a real headless Neovim (0.11: the plugin's own ghost text) with the
real codellama-lsp on the random tiny model.

The model writes arbitrary text that the server may shorten, so no test expects particular
words: each reads what the ghost-text extmark shows, presses a key, and checks that exactly
that (or the part the key takes) went into the buffer.
"""

from __future__ import annotations

import re
import time
from itertools import count

import pytest

from tests.editors.nvim_harness import (
    buffer_text,
    cursor,
    ghost_marks,
    server_command,
    start_nvim,
    stop_nvim,
    wait_for,
)

# The cursor ends up after `return ` on the second line: the random tiny model and the server's
# post-processing leave a non-empty suggestion there (and after one more letter, see below).
SOURCE = "def add(a, b):\n"
TYPED = "    return "
DEBOUNCE_MS = 30

document_numbers = count()


@pytest.fixture(scope="module")
def vim(tmp_path_factory, tiny_checkpoint):
    vim = start_nvim(tmp_path_factory.mktemp("nvim-home"))
    vim.exec_lua(
        """
        local server, model, debounce = ...
        require("codellama").setup({
          cmd = { server },
          settings = { model = model, device = "cpu", maxTokens = 24 },
          debounce_ms = debounce,
        })
        """,
        server_command(),
        str(tiny_checkpoint),
        DEBOUNCE_MS,
    )
    yield vim
    stop_nvim(vim)


def server_status(vim) -> dict:
    status = vim.exec_lua(
        "local status, err = require('codellama').request_status(5000) return status or { error = err }"
    )
    assert "error" not in status, status["error"]
    return status


@pytest.fixture
def editing(vim, tmp_path):
    """A new Python file, the server attached and ready, the cursor in insert mode after TYPED."""
    path = tmp_path / f"example_{next(document_numbers)}.py"
    path.write_text(SOURCE, encoding="utf-8")
    vim.command(f"edit {path}")
    # No indent plugin: the test types the indentation itself, and nothing may re-indent it.
    vim.command("setlocal indentexpr= indentkeys= noautoindent nosmartindent noexpandtab tabstop=8 softtabstop=0")
    wait_for("the server to attach", lambda: vim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0 })") > 0)
    wait_for("the model to load", lambda: server_status(vim)["state"] == "ready", timeout=60)
    vim.input("Go" + TYPED)
    wait_for(
        "insert mode after typing", lambda: buffer_text(vim) == SOURCE + TYPED and vim.api.get_mode()["mode"] == "i"
    )
    yield vim
    vim.input("<Esc>")
    wait_for("normal mode", lambda: vim.api.get_mode()["mode"] == "n")
    vim.command("write")


def wait_for_ghost(vim, timeout: float = 30.0) -> dict:
    def shown():
        marks = ghost_marks(vim)
        return marks[0] if marks and marks[0]["text"] else None

    mark = wait_for("ghost text", shown, timeout)
    assert len(ghost_marks(vim)) == 1, "more than one ghost-text extmark"
    return mark


def insert_at(text: str, row: int, col: int, piece: str) -> str:
    """`text` with `piece` inserted at 0-based (row, byte column)."""
    lines = text.split("\n")
    line = lines[row].encode()
    lines[row] = (line[:col] + piece.encode() + line[col:]).decode()
    return "\n".join(lines)


def test_ghost_text_shows_at_the_cursor_and_tab_inserts_exactly_it(editing):
    vim = editing
    mark = wait_for_ghost(vim)
    before = buffer_text(vim)
    assert (mark["row"], mark["col"]) == cursor(vim) == (1, len(TYPED))
    assert mark["pos"] == "inline"
    accepted_before = server_status(vim)["accepted"]

    vim.input("<Tab>")
    expected = insert_at(before, 1, len(TYPED), mark["text"])
    wait_for(f"the buffer to hold the suggestion {mark['text']!r}", lambda: buffer_text(vim) == expected, 5)
    # The cursor lands after the inserted text, still in insert mode.
    last_line = mark["text"].split("\n")[-1]
    end_col = (len(TYPED.encode()) if "\n" not in mark["text"] else 0) + len(last_line.encode())
    assert cursor(vim) == (1 + mark["text"].count("\n"), end_col)
    assert vim.api.get_mode()["mode"] == "i"
    # Accepting runs the item's command: the server counts it.
    wait_for("the server to count the acceptance", lambda: server_status(vim)["accepted"] == accepted_before + 1, 5)


def next_word(text: str) -> str:
    """The plugin's accept-word unit, written independently: a line break with the next
    line's indentation, else blanks + a run of word characters, else blanks + a run of other
    characters, else the blanks (Lua's %w/%s are ASCII, hence the explicit classes)."""
    space = " \t\n\r\f\v"
    patterns = (r"\n[ \t]*", r"[ \t]*[A-Za-z0-9_]+", rf"[ \t]*[^A-Za-z0-9_{space}]+", r"[ \t]+")
    for pattern in patterns:
        match = re.match(pattern, text)
        if match:
            return match.group()
    return text


def test_accept_word_inserts_the_next_word_and_keeps_the_rest_shown(editing):
    vim = editing
    mark = wait_for_ghost(vim)
    before = buffer_text(vim)
    word = next_word(mark["text"])
    requests_before = server_status(vim)["requests"]

    vim.input("<M-Right>")
    expected = insert_at(before, 1, len(TYPED), word)
    wait_for(f"the buffer to hold the word {word!r}", lambda: buffer_text(vim) == expected, 5)
    rest = mark["text"][len(word) :]
    if rest:
        # The rest stays on screen, right after the cursor, without asking the server again.
        remaining = wait_for_ghost(vim, 5)
        assert remaining["text"] == rest
        assert (remaining["row"], remaining["col"]) == cursor(vim)
        time.sleep(5 * DEBOUNCE_MS / 1000)
        assert server_status(vim)["requests"] == requests_before
    else:
        assert ghost_marks(vim) == []


def test_dismiss_hides_the_suggestion_and_then_keys_fall_through(editing):
    vim = editing
    wait_for_ghost(vim)
    before = buffer_text(vim)
    vim.input("<C-]>")
    wait_for("the ghost text to go", lambda: ghost_marks(vim) == [], 5)
    # Dismissed means gone until the next keystroke, not re-requested by a timer.
    time.sleep(5 * DEBOUNCE_MS / 1000)
    assert ghost_marks(vim) == []
    assert buffer_text(vim) == before
    # With nothing shown, <Tab> is a plain Tab again: a tab character up to the next tab stop (8).
    vim.input("<Tab>")

    def tabbed():
        line = vim.current.buffer[1]
        return "\t" in line and line.rstrip(" \t") == TYPED.rstrip() and vim.funcs.strdisplaywidth(line) == 16

    wait_for("a tab character", tabbed, 5)


def test_a_new_keystroke_replaces_a_stale_suggestion(editing):
    vim = editing
    first = wait_for_ghost(vim)
    # A letter the suggestion does not continue with makes it stale.
    letter = "z" if not first["text"].startswith("z") else "q"
    vim.input(letter)
    wait_for("the letter to be typed", lambda: buffer_text(vim) == SOURCE + TYPED + letter, 5)
    assert all(mark["col"] != first["col"] for mark in ghost_marks(vim)), "the stale suggestion is still shown"
    second = wait_for_ghost(vim)
    assert (second["row"], second["col"]) == cursor(vim) == (1, len(TYPED) + 1)


def test_typing_the_suggestion_keeps_the_rest_without_a_new_request(editing):
    vim = editing
    first = wait_for_ghost(vim)
    typed = first["text"][0]
    if typed == "\n" or len(first["text"]) < 2:
        pytest.skip(f"the tiny model's suggestion {first['text']!r} cannot be typed through by one character")
    requests_before = server_status(vim)["requests"]
    vim.input("<Tab>" if typed == "\t" else typed.replace("<", "<lt>"))
    remaining = wait_for(
        "the rest of the suggestion", lambda: [m for m in ghost_marks(vim) if m["text"] == first["text"][1:]] or None, 5
    )
    assert (remaining[0]["row"], remaining[0]["col"]) == cursor(vim)
    time.sleep(5 * DEBOUNCE_MS / 1000)
    assert server_status(vim)["requests"] == requests_before


def test_leaving_insert_mode_clears_the_suggestion(editing):
    vim = editing
    wait_for_ghost(vim)
    vim.input("<Esc>")
    wait_for("the ghost text to go", lambda: ghost_marks(vim) == [], 5)
    assert buffer_text(vim) == SOURCE + TYPED


def test_checkhealth_reports_server_model_and_version(vim, tiny_checkpoint, editing):
    wait_for_ghost(vim)
    vim.input("<Esc>")
    wait_for("normal mode", lambda: vim.api.get_mode()["mode"] == "n")
    vim.command("checkhealth codellama")
    report = buffer_text(vim)
    vim.command("bwipeout")
    assert "codellama-lsp" in report and "found" in report, report
    version = server_status(vim)["version"]
    assert f"codellama-lsp {version}, state: ready" in report, report
    assert f"model: {tiny_checkpoint}" in report, report
    assert "ERROR" not in report, report


def test_codellama_toggle_turns_completions_off_and_on(editing):
    vim = editing
    wait_for_ghost(vim)
    vim.command("CodellamaToggle")
    wait_for("the server to be disabled", lambda: server_status(vim)["state"] == "disabled", 10)
    assert ghost_marks(vim) == []
    requests_before = server_status(vim)["requests"]
    vim.input("x")
    wait_for("the letter to be typed", lambda: buffer_text(vim) == SOURCE + TYPED + "x", 5)
    time.sleep(5 * DEBOUNCE_MS / 1000)
    assert ghost_marks(vim) == []
    assert server_status(vim)["requests"] == requests_before, "the plugin asked for completions while off"

    vim.command("CodellamaToggle")
    wait_for("the server to be ready", lambda: server_status(vim)["state"] == "ready", 10)
    vim.input("<BS>")
    wait_for_ghost(vim)


def test_codellama_restart_starts_a_new_server(editing):
    vim = editing
    wait_for_ghost(vim)
    old_id = vim.exec_lua("return require('codellama').client().id")
    vim.command("CodellamaRestart")
    wait_for(
        "a new server",
        lambda: vim.exec_lua("local c = require('codellama').client() return c and c.id") not in (None, old_id),
        10,
    )
    wait_for("the new server to load the model", lambda: server_status(vim)["state"] == "ready", 60)
    assert server_status(vim)["requests"] == 0
    vim.input("x")
    wait_for_ghost(vim)


def next_line(text: str) -> str:
    """The plugin's accept-line unit: the rest of the line, or at a line break the next line."""
    match = re.match(r"[^\n]+", text) or re.match(r"\n[^\n]*", text)
    return match.group() if match else text


def test_accept_line_inserts_the_rest_of_the_line(editing):
    vim = editing
    mark = wait_for_ghost(vim)
    before = buffer_text(vim)
    line = next_line(mark["text"])
    vim.input("<M-C-Right>")
    expected = insert_at(before, 1, len(TYPED), line)
    wait_for(f"the buffer to hold the line {line!r}", lambda: buffer_text(vim) == expected, 5)
    rest = mark["text"][len(line) :]
    if rest:
        assert wait_for_ghost(vim, 5)["text"] == rest


def test_meta_bracket_asks_for_more_candidates_and_cycles_through_them(editing):
    """<M-]> after a typed suggestion asks the server explicitly (several candidates) and shows
    another; <M-[> goes back; Tab inserts the one shown."""
    vim = editing
    first = wait_for_ghost(vim)
    before = buffer_text(vim)
    vim.input("<M-]>")

    def another():
        marks = ghost_marks(vim)
        return marks[0] if marks and marks[0]["text"] and marks[0]["hint"] else None

    second = wait_for("a second candidate with its (n/m) hint", another, 30)
    assert re.fullmatch(r" \(2/[23]\)", second["hint"]), second
    assert second["text"] != first["text"]
    vim.input("<M-[>")
    wait_for("back to the first", lambda: ghost_marks(vim)[0]["text"] == first["text"], 5)
    vim.input("<M-]>")
    wait_for("the second again", lambda: ghost_marks(vim)[0]["text"] == second["text"], 5)
    vim.input("<Tab>")
    expected = insert_at(before, 1, len(TYPED), second["text"])
    wait_for("the second candidate in the buffer", lambda: buffer_text(vim) == expected, 5)


def test_ghost_text_has_a_colour_in_a_terminal_without_true_colour(editing):
    vim = editing
    group = vim.exec_lua("return vim.api.nvim_get_hl(0, { name = 'CodellamaSuggestion', link = false })")
    code = vim.exec_lua("return vim.api.nvim_get_hl(0, { name = 'Normal', link = false })")
    assert group.get("ctermfg") is not None and group.get("ctermfg") != code.get("ctermfg")


def test_a_yank_reaches_the_server_as_a_recent_place(editing):
    vim = editing
    vim.input("<Esc>")
    wait_for("normal mode", lambda: vim.api.get_mode()["mode"] == "n")
    vim.current.buffer.append([f"other_{i} = {i}" for i in range(60)])
    before = server_status(vim)["recentPlaces"]
    vim.input("Gyy")
    wait_for("the yank to reach the server", lambda: server_status(vim)["recentPlaces"] == before + 1, 10)
    vim.input("a")  # back to insert mode: the fixture leaves with <Esc>
