"""What machine a figure was measured on: CPU model, vector ISA, cores, torch build.

The project's machines differ (AMD EPYC with AVX2, Intel Xeon with AVX-512, some with
AMX): a speed ratio means little without the instruction set it was measured with, so
every benchmark prints this line. Torch-free except for the optional torch part.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# The flags that decide which kernels run fast, in /proc/cpuinfo's spelling.
ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX"),
)


def cpu_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ("", set()) where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def isa_summary(flags: set[str]) -> str:
    """e.g. "AVX2, AVX-512, AVX512-VNNI, AMX"; "no AVX2" on older x86; the architecture elsewhere."""
    found = [name for flag, name in ISA_FLAGS if flag in flags]
    if found:
        return ", ".join(found)
    return "no AVX2" if platform.machine() in ("x86_64", "AMD64") else platform.machine()


def describe_machine() -> str:
    """One line: CPU model, ISA, cores, Python, and torch's build and kernel choice if torch is loaded."""
    model, flags = cpu_flags()
    parts = [f"CPU {model or platform.machine()}", f"ISA {isa_summary(flags)}", f"{os.cpu_count()} cores"]
    torch = sys.modules.get("torch")
    if torch is not None:
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
        threads = torch.get_num_threads()
        parts.append(f"torch {torch.__version__} (kernels {capability}, {threads} threads)")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


if __name__ == "__main__":
    print(describe_machine())
