"""Screenshot of Neovim's ghost text for editors/README.md: `python -m tests.editors.make_screenshot OUT.png`.

Runs the plugin and the real codellama-lsp in an xterm on a virtual screen (apt-get install
xvfb xterm imagemagick fonts-dejavu-core). The model is tests/lsp's scripted checkpoint, a
tiny model wired to write one fixed completion, because a random model's text would not
show what ghost text looks like; server, plugin and rendering are the real ones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pynvim

from tests.editors.nvim_harness import PLUGIN, ghost_marks, server_command, wait_for
from tests.fixtures import train_tiny_tokenizer
from tests.lsp.scripted_model import write_scripted_checkpoint

# The user has typed `    if not`; the model (bigram chain: its tokens must be distinct) goes on.
COMPLETION = ' xs:\n        raise ValueError("empty")'
SOURCE = "def mean(xs):\n    if not\n    return sum(xs) / len(xs)\n"

INIT = """
vim.opt.rtp:prepend(PLUGIN)
vim.o.termguicolors = true
vim.o.number = true
vim.o.laststatus = 2
vim.o.statusline = " %f %= %{v:lua.require'codellama'.status()} "
require("codellama").setup({
  cmd = { SERVER },
  settings = { model = MODEL, device = "cpu", multiline = "always" },
  debounce_ms = 50,
})
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--display", default=":97")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        model = write_scripted_checkpoint(scratch / "model", train_tiny_tokenizer(scratch / "tok"), COMPLETION)
        (scratch / "mean.py").write_text(SOURCE, encoding="utf-8")
        init = scratch / "init.lua"
        init.write_text(
            f"local PLUGIN, SERVER, MODEL = {str(PLUGIN)!r}, {server_command()!r}, {str(model)!r}\n" + INIT,
            encoding="utf-8",
        )
        socket = scratch / "nvim.sock"
        env = dict(os.environ, DISPLAY=args.display, XDG_STATE_HOME=str(scratch / "state"))
        screen = subprocess.Popen(["Xvfb", args.display, "-screen", "0", "1000x300x24", "-nolisten", "tcp"])
        terminal = None
        try:
            time.sleep(1)
            nvim = str(Path(sys.executable).parent / "nvim")
            terminal = subprocess.Popen(
                ["xterm", "-geometry", "80x10+0+0", "-fa", "DejaVu Sans Mono", "-fs", "13", "-bg", "#14161b"]
                + ["-e", nvim, "--clean", "-u", str(init), "--listen", str(socket), str(scratch / "mean.py")],
                env=env,
                cwd=scratch,
            )
            wait_for("nvim's socket", socket.exists, 20)
            vim = pynvim.attach("socket", path=str(socket))
            wait_for(
                "the model",
                lambda: (
                    vim.exec_lua("local s = require('codellama').request_status(5000) return s and s.state") == "ready"
                ),
                60,
            )
            vim.input("2GA")  # insert mode at the end of `    if not`
            mark = wait_for("ghost text", lambda: (ghost_marks(vim) or [None])[0], 30)
            print(f"ghost text: {mark['text']!r}", file=sys.stderr)
            time.sleep(0.5)  # let the terminal draw it
            # The screen is black, the terminal is not: -trim crops the picture to the terminal.
            shot = ["import", "-display", args.display, "-window", "root", "-trim", "+repage", str(args.out)]
            subprocess.run(shot, check=True)
            vim.input("<Esc>:qa!<CR>")
        finally:
            if terminal:
                terminal.terminate()
            screen.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
