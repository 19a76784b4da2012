"""A real llama.cpp `llama-server` for the backend tests: our GGUF export of a test
checkpoint, served on a free localhost port.

The binary comes from $LLAMA_SERVER or PATH (.ci/run builds it from the pinned
llama-cpp-python sdist). Without one the tests skip, unless CODELLAMA_REQUIRE_LLAMA_SERVER=1
(as in CI), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.lsp.helpers import free_port


def llama_server_binary() -> str:
    found = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if found and Path(found).is_file():
        return found
    message = "no llama-server: set LLAMA_SERVER (.ci/run builds it from the llama-cpp-python sdist)"
    if os.environ.get("CODELLAMA_REQUIRE_LLAMA_SERVER") == "1":
        pytest.fail(message)
    pytest.skip(message)


class LlamaServer:
    """One llama-server process; `url` is where it listens."""

    def __init__(
        self, gguf: Path, parallel: int = 1, port: int | None = None, log: Path | None = None, extra: tuple = ()
    ) -> None:
        self.gguf, self.parallel, self.extra = gguf, parallel, list(extra)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or gguf.with_suffix(f".{self.port}.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> LlamaServer:
        command = [
            llama_server_binary(), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
            "-c", str(1024 * self.parallel), "-np", str(self.parallel), "-t", "1", "--slots", "--no-webui",
            *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"llama-server exited: {self.log.read_text(errors='replace')[-2000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"llama-server did not get ready: {self.log.read_text(errors='replace')[-2000:]}")

    def slots(self) -> list[dict]:
        return httpx.get(f"{self.url}/slots", timeout=5).json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
