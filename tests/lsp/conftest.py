from __future__ import annotations

import pytest
import pytest_asyncio

from tests.lsp.helpers import CLIENTS, start_client, wait_for_state


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
