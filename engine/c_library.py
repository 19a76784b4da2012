"""The engine's C library (the decode step, the prefill's dequantization, the benchmark's read bound):
built once per machine.

The C sources are compiled here, with this machine's C compiler and `-march=native` (as
inductor compiles its kernels, so their loops vectorize for whatever ISA the CPU has), into this
user's private cache folder (engine.user_cache: never a folder another local user can write),
named by a hash of the sources, the flags, the compiler and the CPU, so a restart loads it at
once. Callers keep a torch path for machines without a compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from engine.machine import cpu_flags
from engine.user_cache import private_cache_or_temporary

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / "cpu_decode.c", HERE / "cpu_dequant.c", HERE / "cpu_read.c"]
HEADERS = [HERE / "cpu_bf16.h"]
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]
COMPILE_TIMEOUT_S = 300
"""A compiler that hangs fails the build (the engine keeps its torch paths) instead of the request."""
STALE_AFTER_S = 3600
"""A temporary file this old is a build whose process died: removed."""


def c_compiler() -> list[str] | None:
    """The compiler command: $CC (which may carry arguments: `ccache gcc`), else cc, gcc or clang."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def library_key(compiler: list[str]) -> str:
    """What the built library depends on: the sources, the flags, the compiler and the CPU."""
    version = subprocess.run(
        [*compiler, "--version"], capture_output=True, text=True, check=True, timeout=COMPILE_TIMEOUT_S
    ).stdout
    model, flags = cpu_flags()
    sources = [path.read_bytes().decode() for path in (*SOURCES, *HEADERS)]
    parts = [*sources, " ".join(FLAGS), version, model, " ".join(sorted(flags))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


_library: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """The library for this machine: from the cache, or compiled now (a second or two).
    Raises RuntimeError (no compiler, or it failed) with the compiler's message."""
    global _library
    if _library is not None:
        return _library
    compiler = c_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC)")
    folder, why = private_cache_or_temporary("cpu-decode")
    if why:
        log.warning("the engine's C library is not kept across restarts: %s", why)
    path = folder / f"cpu_decode-{library_key(compiler)}.so"
    if not path.is_file() or path.is_symlink():
        remove_stale(folder)
        # Written under a temporary name, then renamed: a library is whole or absent.
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".cpu_decode-", suffix=".so")
        os.close(handle)
        try:
            command = [*compiler, *FLAGS, "-o", temporary, *map(str, SOURCES), "-lm"]
            names = ", ".join(source.name for source in SOURCES)
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"{shlex.join(compiler)} took over {COMPILE_TIMEOUT_S} s on {names}") from e
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(compiler)} could not compile {names}: {done.stderr.strip()[-800:]}")
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    _library = ctypes.CDLL(str(path))
    return _library


def library_or_none() -> ctypes.CDLL | None:
    """load_library(), or None where it cannot be built (no compiler, a failed or hung build),
    for callers that then keep a torch path; the reason is logged once."""
    global _why_not
    try:
        return load_library()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        if _why_not is None:
            _why_not = str(e)
            log.warning("the engine's C library cannot be built here: %s", e)
        return None


_why_not: str | None = None


def remove_stale(folder: Path) -> None:
    """Before a build: drop the libraries earlier sources or compilers built (a process still
    running one keeps its mapping) and temporary files of builds that died."""
    for old in folder.glob("cpu_decode-*.so"):
        old.unlink(missing_ok=True)
    for temporary in folder.glob(".cpu_decode-*"):
        try:
            if time.time() - temporary.lstat().st_mtime > STALE_AFTER_S:
                temporary.unlink()
        except OSError:  # another process removed it first
            continue
