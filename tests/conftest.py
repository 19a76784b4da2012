from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.tokenizer import Tokenizer
from tests.fixtures import train_tiny_tokenizer, write_tiny_checkpoint
from tests.lsp.helpers import LONG_SCRIPT, SCRIPT
from tests.lsp.scripted_model import write_scripted_checkpoint

# Every server a test starts would otherwise compile its decode step in the background (seconds
# to a minute of both CPUs each): the tests of compiling ask for it (tests/engine/test_compiled.py).
os.environ["CODELLAMA_LSP_COMPILE"] = "off"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """What the engine measures and compiles is cached for the test session only, not in ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """A random-weight 2-layer model in codellama-lsp format (with the tiny tokenizer)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer_path)


@pytest.fixture(scope="session")
def scripted_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """Writes SCRIPT, then stops."""
    return write_scripted_checkpoint(tmp_path_factory.mktemp("ckpt") / "scripted", tokenizer_path, SCRIPT)


@pytest.fixture(scope="session")
def looping_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """Writes LONG_SCRIPT over and over on one line: generation only stops at the token limit or
    when cancelled (its period is too long for post-processing to call it a degenerate loop)."""
    folder = tmp_path_factory.mktemp("ckpt") / "looping"
    return write_scripted_checkpoint(folder, tokenizer_path, LONG_SCRIPT, loop=True)


@pytest.fixture(scope="session")
def stuttering_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """Writes SCRIPT over and over: a model stuck in a short loop, which post-processing cuts."""
    folder = tmp_path_factory.mktemp("ckpt") / "stuttering"
    return write_scripted_checkpoint(folder, tokenizer_path, SCRIPT, loop=True)
