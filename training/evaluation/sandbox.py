"""Running generated programs in a separate, resource-limited process.

Model-generated code is untrusted: it may loop forever, allocate without bound, write huge
files, crash the interpreter or call `os._exit`. Each program therefore runs in its own
`python -I` child (isolated mode: no user site-packages, no PYTHON* variables) in a fresh
temporary directory, under limits the child sets on itself before reading the program
(resource.setrlimit: CPU seconds, address space, file size, no core dumps). The parent
enforces a wall-clock timeout and kills the child's whole process group.

A program passes only if it runs to the end: the child reports success through a private
pipe after the program returns, so a program that calls `os._exit(0)` (exit status 0 but
never finishes) or `sys.exit(0)` (an exception, as in OpenAI's harness) fails.

This is a containment measure against accidents, not a security sandbox against hostile
code (the child can still read files and use the network); run untrusted models'
benchmarks in a container or VM.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Runs in the child. argv: CPU seconds, address-space bytes, file-size bytes, marker fd.
CHILD_MAIN = """
import os, resource, sys
cpu, memory, file_size, marker = (int(a) for a in sys.argv[1:5])
# The CPU hard limit is one second above the soft one, so the kernel sends SIGXCPU first.
for limit, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory, memory),
                          (resource.RLIMIT_FSIZE, file_size, file_size), (resource.RLIMIT_CORE, 0, 0)):
    try:
        resource.setrlimit(limit, (soft, hard))
    except (ValueError, OSError):  # e.g. RLIMIT_AS on macOS; the wall-clock timeout still holds
        pass
with open("program.py", encoding="utf-8") as f:
    code = compile(f.read(), "program.py", "exec")
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
os.write(marker, b"done")
"""
STDERR_TAIL = 2000


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0
    """Wall-clock seconds for the program (OpenAI's harness uses 3); startup is allowed on top."""
    memory_mb: int = 1024
    """Address-space limit."""
    file_size_mb: int = 16
    """Largest file the program may write (its stdout and stderr count)."""
    startup_s: float = 2.0
    """Extra wall-clock time for starting the interpreter on a busy machine."""


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str
    """"passed", "timed out", "failed: <last line of stderr>", "killed by SIGXCPU", or
    "exited without finishing" (e.g. os._exit)."""


def run_program(source: str, limits: Limits = Limits()) -> ExecResult:
    """Run one Python program in a limited child process and say whether it finished cleanly."""
    with tempfile.TemporaryDirectory(prefix="codellama-eval-") as workdir:
        Path(workdir, "program.py").write_text(source, encoding="utf-8")
        read_end, write_end = os.pipe()
        cpu_s = max(1, math.ceil(limits.timeout_s))
        args = [str(cpu_s), str(limits.memory_mb << 20), str(limits.file_size_mb << 20), str(write_end)]
        try:
            with open(Path(workdir, "stdout"), "wb") as out, open(Path(workdir, "stderr"), "wb") as err:
                child = subprocess.Popen(
                    [sys.executable, "-I", "-c", CHILD_MAIN, *args],
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=(write_end,),
                    env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"},
                    # Its own process group, so a timeout kills whatever it started too.
                    start_new_session=True,
                )
            os.close(write_end)
            write_end = -1
            try:
                returncode = child.wait(timeout=limits.timeout_s + limits.startup_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_group(child)
            returncode = child.wait()
            os.set_blocking(read_end, False)
            try:
                finished = os.read(read_end, 16) == b"done"
            except BlockingIOError:
                finished = False
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if timed_out:
            return ExecResult(False, "timed out")
        if finished and returncode == 0:
            return ExecResult(True, "passed")
        if returncode < 0:
            return ExecResult(False, f"killed by {signal_name(-returncode)}")
        if returncode == 0:
            return ExecResult(False, "exited without finishing")
        return ExecResult(False, f"failed: {last_error_line(Path(workdir, 'stderr'))}")


def kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_error_line(stderr: Path) -> str:
    with open(stderr, "rb") as f:
        f.seek(max(0, stderr.stat().st_size - STDERR_TAIL))
        tail = f.read().decode("utf-8", errors="replace")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


class ProgramRunner:
    """A small pool of threads, each waiting on one child process at a time."""

    def __init__(self, workers: int = 2, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="eval-exec")

    def submit(self, source: str, on_done: Callable[[], None] | None = None) -> Future[ExecResult]:
        future = self._pool.submit(run_program, source, self.limits)
        if on_done is not None:
            future.add_done_callback(lambda _: on_done())
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ProgramRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
