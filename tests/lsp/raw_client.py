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
        self._responses: dict[Any, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._reading = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def stdio(cls, *command: str) -> RawConnection:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(process.stdout, process.stdin, process)

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
            message = json.loads(await self.reader.readexactly(length))
            if "method" in message and "id" in message:  # a request from the server: accept it
                await self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)
            elif message.get("id") in self._responses:
                self._responses.pop(message["id"]).set_result(message)
