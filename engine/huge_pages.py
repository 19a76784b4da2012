"""Weights and KV cache in 2 MB pages, where Linux allows it.

A decode step streams every weight once a token, so it runs at the memory bandwidth the CPU
gets. With 4 KB pages that stream needs a page-table walk every 4 KB (a 7B model in bf16 is 3.3
million pages), and the hardware prefetchers stop at each page's end. On a 2-core AMD EPYC (Zen 4)
a plain 1 GB read measured 21-25 GB/s in 4 KB pages and 25-31 GB/s in 2 MB pages, side by side.

Most distributions ship transparent huge pages as "madvise": a process gets them only for
memory it asks for, and torch's allocator never asks (weights loaded from safetensors are not
even the process's own memory but a private mapping of the file, which cannot have them). So
after loading, each big tensor is copied into fresh anonymous memory that asked for them
(MADV_HUGEPAGE before its first touch), and the model points there; the KV cache is allocated
there from the start (huge_page_zeros). Where the kernel has no huge pages to give (not Linux,
THP "never"), nothing is copied; where it refuses one (none free), that memory has 4 KB pages;
where free memory is short, nothing moves (room_for).
"""

from __future__ import annotations

import functools
import logging
import mmap
import sys
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MEMORY_MARGIN = 1 << 30
"""Free memory the copies must leave (or a tenth of what is free, if more)."""
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def huge_pages_usable() -> bool:
    """Linux with transparent huge pages "always" or "madvise" (the bracketed word of the setting)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def huge_page_tensor(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A zeroed CPU tensor starting on a 2 MB boundary of memory that asked for huge pages,
    touched only when written; None where the memory cannot be had (the caller keeps its own).
    The memory stays mapped for as long as the tensor, or a view of it, lives."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    try:
        # (private: a shared anonymous mapping is shmem, which has its own huge page setting, mostly "never")
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    except OSError as e:  # an address-space limit, strict overcommit
        log.debug("no memory for %d bytes in huge pages: %s", nbytes, e)
        return None
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without THP: the memory is still good, in 4 KB pages
        pass
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes].view(dtype).view(shape)


def huge_page_zeros(shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """torch.zeros(shape, device, dtype); on the CPU in huge-page memory where it is big enough and
    the kernel gives huge pages (a KV cache: attention reads it all, a token at a time)."""
    if torch.device(device).type == "cpu" and huge_pages_usable():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        zeros = huge_page_tensor(shape, dtype) if nbytes >= HUGE_PAGE else None
        if zeros is not None:
            return zeros
    return torch.zeros(shape, device=device, dtype=dtype)


def huge_page_copy(tensor: torch.Tensor) -> torch.Tensor | None:
    """A copy of a contiguous CPU tensor in huge-page memory (None where there is none to have)."""
    copy = huge_page_tensor(tensor.shape, tensor.dtype)
    return None if copy is None else copy.copy_(tensor)


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping: /proc/meminfo's MemAvailable (page cache that
    can be dropped included), or less where a cgroup (a container) allows less; None where
    neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    try:  # cgroup v2: this process's group, its limit and use
        group = Path("/proc/self/cgroup").read_text(encoding="ascii").strip().split("::", 1)[1]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text(encoding="ascii").strip()
        if limit != "max":
            used = int((folder / "memory.current").read_text(encoding="ascii"))
            available = min(available, int(limit) - used)
    except (OSError, ValueError, IndexError):
        pass
    return available


def room_for(nbytes: int) -> bool:
    """Whether copying nbytes leaves a margin of free memory. Weights mapped from a checkpoint
    file are page cache the kernel may drop and read again under memory pressure; their copies
    are the process's own and may not be, so on a machine short of memory they stay mapped."""
    available = available_memory()
    return available is None or available - nbytes >= max(MEMORY_MARGIN, available // 10)


def owns_its_memory(tensor: torch.Tensor) -> bool:
    """A contiguous CPU tensor that is all of its storage (not a view into a bigger one)."""
    return (
        tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nbytes
    )


def use_huge_pages(model: nn.Module) -> int:
    """Give the model's CPU parameters and buffers memory of their own: 2 MB pages for those of a
    whole page or more, plain memory for the rest (then nothing points into the checkpoint file's
    mapping any more, and it is unmapped rather than kept beside the copies). Returns the bytes
    now in huge-page memory; 0, and nothing copied, where the kernel gives no huge pages or the
    copies would not leave room (room_for).

    Run it before any decode step is built: those keep raw addresses of the weights. A Parameter
    reached twice (tied weights) is one Parameter with new memory; a tensor that is a view into a
    bigger one stays where it is (copying it would keep both)."""
    if not huge_pages_usable():
        return 0
    # (what would be copied: not a view, such as the tiles engine.cpu_linear made here already)
    if not room_for(sum(t.nbytes for t in (*model.parameters(), *model.buffers()) if owns_its_memory(t))):
        log.info("weights stay in 4 KB pages: not enough free memory for a copy of them")
        return 0
    done: set[int] = set()
    moved_bytes = 0

    def moved(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal moved_bytes
        if not owns_its_memory(tensor) or tensor.data_ptr() in done:
            return tensor
        copy = huge_page_copy(tensor) if tensor.nbytes >= HUGE_PAGE else tensor.clone()
        if copy is None:
            return tensor
        done.add(copy.data_ptr())
        moved_bytes += tensor.nbytes if tensor.nbytes >= HUGE_PAGE else 0
        return copy

    # One tensor at a time, the old one let go before the next copy: the peak is one tensor more.
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            parameter.data = moved(parameter.data)
        for name in list(module._buffers):
            if module._buffers[name] is not None:
                module._buffers[name] = moved(module._buffers[name])
    log.debug("%.0f MB of weights in huge-page memory", moved_bytes / 2**20)
    return moved_bytes
