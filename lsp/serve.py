"""Running sessions over stdio and TCP: one model host, one session per connection.

Whatever a peer does, only its own session ends: over stdio that is the process (the
editor owns it), over TCP one connection of many. Ending is orderly: the session's work
is cancelled, and before the process exits the inference thread is stopped and joined,
so torch is never torn down under a running decode step (which aborted the process with
"terminate called without an active exception").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from engine.options import COMPILE_THREAD
from lsp.host import ModelHost
from lsp.server import CodeLlamaServer, new_session
from lsp.transport import READ_CHUNK, MessageReader

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
"""TCP connections served at once; more are closed as they arrive."""
MAX_UNSENT_BYTES = 64 * 2**20
"""A TCP peer that stops reading its answers is disconnected once this much is queued for it."""

Configure = Callable[[CodeLlamaServer], None]


class SessionWriter:
    """pygls' writer for one connection: a write that fails ends that session, not the process."""

    def __init__(self, write: Callable[[bytes], Any], is_open: Callable[[], bool], on_broken: Callable[[], None]):
        self._write, self._is_open, self._on_broken = write, is_open, on_broken

    def write(self, data: bytes) -> None:
        if not self._is_open():
            return
        try:
            self._write(data)
        except (OSError, ValueError, RuntimeError) as e:  # BrokenPipe, a closed file or transport
            log.info("the client's end is closed (%s): ending its session", e)
            self._on_broken()

    def close(self) -> None:
        pass


async def run_session(session: CodeLlamaServer, read: Callable[[], Any]) -> int:
    """Feed one connection's messages to its session until the stream ends or the client exits.

    Returns the exit code LSP prescribes (0 when the stream just ended)."""
    reader = MessageReader(read)
    protocol = session.protocol
    exit_code = asyncio.get_running_loop().create_future()

    def on_exit(code: int) -> None:
        if not exit_code.done():
            exit_code.set_result(code)

    protocol.on_exit = on_exit

    async def pump() -> None:
        try:
            while not exit_code.done():
                frame = await reader.next_frame()
                if frame is None:
                    break
                if isinstance(frame, dict):
                    protocol.receive(frame)
                else:
                    log.warning("bad frame: %s", frame.message)
                    session.client_problem(frame.message)
                    protocol._send_data(frame.response())
        except Exception:
            log.exception("reading from the client failed")
        finally:
            on_exit(0)

    pumping = asyncio.ensure_future(pump())
    try:
        return await exit_code
    finally:
        pumping.cancel()
        session.close()


# ---- stdio ----


def stdin_reader(stream: BinaryIO) -> Callable[[], Any]:
    """Chunks of stream, read on a daemon thread: interpreter exit never waits for a blocked read.

    It reads the file descriptor itself: a daemon thread blocked inside the BufferedReader
    would hold its lock, and the interpreter aborts when it cannot take it at exit."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    room = threading.Semaphore(16)  # chunks read ahead at most: a fast writer cannot fill memory
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (tests)
        fd = None

    def read_chunk() -> bytes:
        return os.read(fd, READ_CHUNK) if fd is not None else stream.read1(READ_CHUNK)

    def pump() -> None:
        while True:
            room.acquire()
            try:
                chunk = read_chunk()
            except (OSError, ValueError):
                chunk = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed
                return
            if not chunk:
                return

    async def read() -> bytes:
        chunk = await chunks.get()
        room.release()
        return chunk

    threading.Thread(target=pump, name="codellama-stdin", daemon=True).start()
    return read


def serve_stdio(configure: Configure, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Serve one editor over stdin/stdout; returns the process's exit code."""
    host = ModelHost(shared=False)
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    broken = threading.Event()

    async def main() -> int:
        session = new_session(host)
        configure(session)

        def write(data: bytes) -> None:
            stdout.write(data)
            stdout.flush()

        def on_broken() -> None:
            broken.set()
            session.protocol.on_exit(0)

        session.protocol.set_writer(SessionWriter(write, lambda: not broken.is_set(), on_broken))
        reading = stdin_reader(stdin)

        async def read() -> bytes:
            if broken.is_set():
                return b""
            return await reading()

        return await run_session(session, read)

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 1
    return finish(host, code)


def finish(host: ModelHost, code: int) -> int:
    """Stop the inference thread before the interpreter exits; if it will not stop, or the decode
    step is still compiling, exit hard."""
    if not host.stop():
        log.error("the inference thread did not stop in time: exiting without waiting for it")
        exit_now(code)
    if any(t.name == COMPILE_THREAD and t.is_alive() for t in threading.enumerate()):
        # A compile cannot be interrupted, and finalizing the interpreter under it aborts the
        # process (C++ terminate, SIGABRT). Nothing is lost: it was compiling for this process.
        log.info("exiting while the decode step compiles")
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---- TCP ----


def serve_tcp(configure: Configure, host_address: str, port: int, base_spec: Any) -> int:
    """Serve any number of editors on host_address:port, each connection its own session."""
    host = ModelHost(shared=True, base_spec=base_spec)
    ids = itertools.count(1)
    open_sessions: set[int] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(open_sessions) >= MAX_CONNECTIONS:
            log.warning("refused a connection from %s: %d are open", peer, len(open_sessions))
            writer.close()
            return
        session_id = next(ids)
        open_sessions.add(session_id)
        log.info("session %d: connected from %s", session_id, peer)
        closed = asyncio.Event()

        def write(data: bytes) -> None:
            if writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
                raise RuntimeError(f"the client reads none of its answers ({MAX_UNSENT_BYTES:,} bytes queued)")
            writer.write(data)

        def is_open() -> bool:
            return not (closed.is_set() or writer.is_closing())

        async def read() -> bytes:
            if closed.is_set():
                return b""
            try:
                return await reader.read(READ_CHUNK)
            except (ConnectionError, OSError):
                return b""

        session = new_session(host, session_id)
        configure(session)

        def on_broken() -> None:
            closed.set()
            session.protocol.on_exit(0)

        session.protocol.set_writer(SessionWriter(write, is_open, on_broken))
        try:
            code = await run_session(session, read)
            log.info("session %d: ended (%d)", session_id, code)
        except asyncio.CancelledError:  # the server is stopping
            log.info("session %d: closed as the server stops", session_id)
        except Exception:
            log.exception("session %d failed", session_id)
        finally:
            open_sessions.discard(session_id)
            writer.close()

    async def main() -> None:
        host.start()
        server = await asyncio.start_server(on_connection, host_address, port)
        addresses = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
        log.warning("codellama-lsp listening on %s", addresses)
        serving = asyncio.ensure_future(server.serve_forever())
        with contextlib.suppress(NotImplementedError):  # SIGTERM ends the server as Ctrl-C does
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        log.warning("codellama-lsp stopped listening")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return finish(host, 0)
