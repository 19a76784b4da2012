from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from tests.lsp.helpers import CLIENTS, SCRIPT, start_client, wait_for_state
from tests.lsp.scripted_model import write_scripted_checkpoint


@pytest.fixture(scope="session")
def scripted_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """Writes SCRIPT, then stops."""
    return write_scripted_checkpoint(tmp_path_factory.mktemp("ckpt") / "scripted", tokenizer_path, SCRIPT)


@pytest.fixture(scope="session")
def looping_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """Writes SCRIPT over and over: generation only stops at the token limit or when cancelled."""
    return write_scripted_checkpoint(tmp_path_factory.mktemp("ckpt") / "looping", tokenizer_path, SCRIPT, loop=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=CLIENTS)
async def client(request, scripted_checkpoint):
    """One server per client kind, shared by the end-to-end tests (each uses its own documents)."""
    client = await start_client(request.param, "--model", str(scripted_checkpoint))
    await wait_for_state(client, "ready")
    yield client
    await client.shutdown_session()
    await client.stop()


@pytest.fixture
def uri(request) -> str:
    """A document name of its own for each test (the shared server keeps every document open)."""
    name = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    return f"file:///work/project/{name}.py"
