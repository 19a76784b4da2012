"""The engine's C library (the decode step, the prefill's dequantization): built once per machine.

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
import shutil
import subprocess
import tempfile
from pathlib import Path

from engine.machine import cpu_flags
from engine.user_cache import private_cache_or_temporary

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / "cpu_decode.c", HERE / "cpu_dequant.c"]
HEADERS = [HERE / "cpu_bf16.h"]
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]


def c_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def library_key(compiler: str) -> str:
    """What the built library depends on: the sources, the flags, the compiler and the CPU."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
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
        # Written under a temporary name, then renamed: a library is whole or absent.
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".cpu_decode-", suffix=".so")
        os.close(handle)
        try:
            command = [compiler, *FLAGS, "-o", temporary, *map(str, SOURCES), "-lm"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                names = ", ".join(source.name for source in SOURCES)
                raise RuntimeError(f"{compiler} could not compile {names}: {done.stderr.strip()[-800:]}")
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    _library = ctypes.CDLL(str(path))
    return _library


def forget() -> None:
    """Load (or build) the library again at the next call (tests that change the flags)."""
    global _library
    _library = None
