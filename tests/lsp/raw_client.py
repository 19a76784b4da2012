"""A bare JSON-RPC connection to the server, for sending what no proper client would.

pytest-lsp's client validates what it sends; this one writes any bytes, so tests can send
malformed params, broken JSON, or requests before `initialize`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, process=None) -> None:
        self.reader, self.writer, self.process = reader, writer, process
        self.notifications: list[dict] = []
        self.unmatched: list[dict] = []
        """Responses to no request of ours (the server's answers with id null)."""
        self._responses: dict[Any, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._reading = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def stdio(cls, *command: str, stderr: bool = False) -> RawConnection:
        """stderr=True keeps the server's stderr for the test (only for quiet runs: a full pipe blocks it)."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stderr else None,
        )
        return cls(process.stdout, process.stdin, process)

    @classmethod
    async def tcp(cls, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send_bytes(self, body: bytes) -> None:
        self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await self.writer.drain()

    async def send(self, message: dict) -> None:
        await self.send_bytes(json.dumps(message).encode())

    async def notify(self, method: str, params: Any = None) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any = None, timeout: float = 60) -> dict:
        """The whole response message: {"result": ...} or {"error": {"code", "message"}}."""
        return await self.request_raw({"jsonrpc": "2.0", "method": method, "params": params}, timeout)

    async def request_raw(self, message: dict, timeout: float = 60) -> dict:
        message = {**message, "id": next(self._ids)}
        future = asyncio.get_running_loop().create_future()
        self._responses[message["id"]] = future
        await self.send(message)
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        self._reading.cancel()
        self.writer.close()
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def _read_loop(self) -> None:
        while True:
            length = None
            while True:
                header = await self.reader.readline()
                if not header:
                    return
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
                elif header in (b"\r\n", b"\n") and length is not None:
                    break
            try:
                message = json.loads(await self.reader.readexactly(length))
            except asyncio.IncompleteReadError:
                return
            if "method" in message and "id" in message:  # a request from the server: accept it
                await self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)
            elif message.get("id") in self._responses:
                self._responses.pop(message["id"]).set_result(message)
            else:
                self.unmatched.append(message)

    async def initialize(self, options: Any = None, capabilities: dict | None = None) -> dict:
        """initialize + initialized, as a client does; returns the initialize response."""
        params = {"processId": None, "capabilities": capabilities or {}, "initializationOptions": options}
        response = await self.request("initialize", params)
        await self.notify("initialized", {})
        return response

    async def status(self) -> dict:
        return (await self.request("codellama/status"))["result"]

    async def wait_until_ready(self, timeout: float = 90) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while (current := await self.status())["state"] != "ready":
            assert current["state"] != "error" and asyncio.get_running_loop().time() < deadline, current
            await asyncio.sleep(0.1)
        return current

    async def wait_for_message(self, predicate, timeout: float = 10) -> str:
        """The first window/showMessage text matching predicate, waiting for it (handlers run async)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (found := [m for m in self.shown_messages() if predicate(m)]):
            assert asyncio.get_running_loop().time() < deadline, self.shown_messages()
            await asyncio.sleep(0.05)
        return found[0]

    async def closed_by_server(self, timeout: float = 10) -> None:
        """Wait until the server ends the connection (the read loop sees the end of the stream)."""
        await asyncio.wait_for(asyncio.shield(self._reading), timeout)

    def shown_messages(self) -> list[str]:
        return [n["params"]["message"] for n in self.notifications if n["method"] == "window/showMessage"]
