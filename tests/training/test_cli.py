"""The `codellama-train` command: every subcommand has --help; `python -m training` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.cli import build_parser, main

SUBCOMMANDS = ("prepare", "tokenizer", "fit", "export")


def test_python_dash_m_training_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"usage: codellama-train {name}" in capsys.readouterr().out


def test_fit_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--train.grad_accum" in text and "Micro-batches accumulated per optimizer step" in text
    assert "--model.rope_theta" in text and "--lora.targets" in text


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([])
    assert exit_.value.code == 2
