"""`codellama-lsp complete` and `convert`, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys

from tests.lsp.helpers import SCRIPT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lsp", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_complete_raw_prints_only_the_middle(tiny_checkpoint, tmp_path):
    source = tmp_path / "example.py"
    source.write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    \n", encoding="utf-8")
    result = run("complete", "--raw", "--model", str(tiny_checkpoint), "--max-tokens", "7", f"{source}:6:5")
    assert result.returncode == 0, result.stderr
    assert "generated 7 tokens" in result.stderr and "prefilled" in result.stderr
    from engine.checkpoints import load_model
    from engine.generate import SamplingParams
    from engine.session import InfillEngine

    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu")
    text = source.read_text()
    cursor = text.index("    \n", text.index("def sub")) + 4
    expected = InfillEngine(model, tokenizer).complete(text[:cursor], text[cursor:], params=SamplingParams(7)).text
    assert result.stdout == expected


def test_complete_prints_what_the_editor_shows(scripted_checkpoint, stuttering_checkpoint, tmp_path):
    """The server's pipeline: a model that never stops is cut where post-processing cuts it."""
    source = tmp_path / "example.py"
    source.write_text("def add(a, b):\n    \n\n\ndef sub(a, b):\n    return a - b\n", encoding="utf-8")
    shown = run("complete", "--model", str(scripted_checkpoint), f"{source}:2:5")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == SCRIPT and "printed: what an editor shows" in shown.stderr
    looping = run("complete", "--model", str(stuttering_checkpoint), "--max-tokens", "60", f"{source}:2:5")
    raw = run("complete", "--raw", "--model", str(stuttering_checkpoint), "--max-tokens", "60", f"{source}:2:5")
    assert raw.stdout.count(SCRIPT) >= 3  # the model repeats itself ...
    assert looping.stdout == SCRIPT and "stopped: post_process" in looping.stderr  # ... the editor is shown one


def test_complete_reports_bad_positions_and_files(tiny_checkpoint, tmp_path):
    source = tmp_path / "x.py"
    source.write_text("a = 1\n", encoding="utf-8")
    cases = {
        f"{source}:9:1": "line 9 is outside the file (1..2)",
        f"{source}:1:99": "column 99 is outside line 1 (1..6)",
        f"{tmp_path / 'missing.py'}:1:1": "No such file",
        "no-colons": "expected FILE:LINE:COL",
    }
    for location, message in cases.items():
        result = run("complete", "--model", str(tiny_checkpoint), location)
        assert result.returncode == 2 and message in result.stderr, (location, result.stderr)
        assert result.stdout == ""


def test_convert_writes_a_quantized_checkpoint(tiny_checkpoint, tmp_path):
    result = run("convert", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "q8"), "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    from engine.checkpoints import inspect_checkpoint

    assert inspect_checkpoint(tmp_path / "q8").quantization == "int8"
