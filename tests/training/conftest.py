from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 350 short documents of real Python (15-line pieces of stdlib modules)."""
    return make_corpus(tmp_path_factory.mktemp("fit-corpus") / "corpus", valid_fraction=0.1, chunk_lines=15)
