"""A multi-line suggestion in the headless Neovim: first line inline, the rest as virtual lines,
and <Tab> inserts all of it. The random tiny model rarely writes several lines, so this uses
tests/lsp's scripted checkpoint, a tiny model wired to write one known completion."""

from __future__ import annotations

import pytest

from tests.editors.nvim_harness import buffer_text, cursor, ghost_marks, server_command, start_nvim, stop_nvim, wait_for
from tests.lsp.scripted_model import write_scripted_checkpoint

# The user has typed `    if not`; the scripted model continues (its tokens must be distinct).
COMPLETION = ' xs:\n        raise ValueError("empty")'
SOURCE = "def mean(xs):\n    if not\n    return sum(xs) / len(xs)\n"


@pytest.fixture(scope="module")
def vim(tmp_path_factory, tokenizer_path):
    model = write_scripted_checkpoint(tmp_path_factory.mktemp("ckpt") / "scripted", tokenizer_path, COMPLETION)
    vim = start_nvim(tmp_path_factory.mktemp("nvim-home"))
    vim.exec_lua(
        """
        local server, model = ...
        require("codellama").setup({
          cmd = { server },
          settings = { model = model, device = "cpu", multiline = "always" },
          debounce_ms = 30,
        })
        """,
        server_command(),
        str(model),
    )
    yield vim
    stop_nvim(vim)


def test_a_multiline_suggestion_is_inline_text_plus_virtual_lines_and_tab_inserts_it(vim, tmp_path):
    path = tmp_path / "mean.py"
    path.write_text(SOURCE, encoding="utf-8")
    vim.command(f"edit {path}")
    wait_for(
        "the model to load",
        lambda: vim.exec_lua("local s = require('codellama').request_status(5000) return s and s.state") == "ready",
        60,
    )
    vim.input("2GA")
    mark = wait_for("ghost text", lambda: (ghost_marks(vim) or [None])[0], 30)
    assert "\n" in mark["text"], f"expected several lines, got {mark['text']!r}"
    assert (mark["row"], mark["col"]) == cursor(vim) == (1, len("    if not"))
    lines = mark["text"].split("\n")
    details = vim.exec_lua(
        """
        local namespace = vim.api.nvim_get_namespaces()["codellama.ghost"]
        return vim.api.nvim_buf_get_extmarks(0, namespace, 0, -1, { details = true })[1][4]
        """
    )
    assert details["virt_text_pos"] == "inline"
    assert len(details["virt_lines"]) == len(lines) - 1

    before = buffer_text(vim)
    vim.input("<Tab>")
    source_lines = before.split("\n")
    source_lines[1] += mark["text"]
    expected = "\n".join(source_lines)
    wait_for("the buffer to hold the suggestion", lambda: buffer_text(vim) == expected, 5)
    assert cursor(vim) == (1 + len(lines) - 1, len(lines[-1].encode()))
    vim.input("<Esc>")
    wait_for("the ghost text to go", lambda: ghost_marks(vim) == [], 5)
