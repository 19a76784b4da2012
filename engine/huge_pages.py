"""Weights and KV cache in 2 MB pages, where Linux allows it.

A decode step streams every weight once a token, so it runs at the memory bandwidth the CPU
gets. With 4 KB pages that stream needs a page-table walk every 4 KB (a 7B model in bf16 is 3.3
million pages), and the hardware prefetchers stop at each page's end. On a 2-core AMD EPYC (Zen 4)
a plain 1 GB read measured 21-25 GB/s in 4 KB pages and 25-31 GB/s in 2 MB pages, side by side.

Most distributions ship transparent huge pages as "madvise": a process gets them only for
memory it asks for, and torch's allocator never asks (weights loaded from safetensors are not
even the process's own memory but a private mapping of the file, which cannot have them). So
after loading, each big tensor is copied into fresh anonymous memory that asked for them
(MADV_HUGEPAGE before its first touch), and the model and KV cache point there. Where the
kernel says no (not Linux, THP "never", no free huge page), the copy simply has 4 KB pages;
where free memory is short, nothing moves (room_for).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MEMORY_MARGIN = 1 << 30
"""Free memory the copies must leave (or a tenth of what is free, if more)."""


def huge_page_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a CPU tensor starting on a 2 MB boundary of memory that asked for
    huge pages (it stays mapped for as long as the copy, or a view of it, lives)."""
    # (private: a shared anonymous mapping is shmem, which has its own huge page setting, mostly "never")
    region = mmap.mmap(-1, tensor.nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)  # anonymous, zero-filled
    if hasattr(mmap, "MADV_HUGEPAGE"):  # (Linux only)
        region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive
    start = -raw.data_ptr() % HUGE_PAGE
    copy = raw[start : start + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
    return copy.copy_(tensor)


def available_memory() -> int | None:
    """/proc/meminfo's MemAvailable in bytes (what can be allocated without swapping, page cache
    that can be dropped included); None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def use_huge_pages(model: nn.Module, tensor_lists: Iterable[list[torch.Tensor]] = ()) -> int:
    """Give the model's CPU parameters and buffers, and the tensors of each list (a KV cache's
    keys, values), memory of their own: 2 MB pages for those of a whole page or more, plain
    memory for the rest (then nothing points into the checkpoint file's mapping any more, and it
    is unmapped rather than kept beside the copies). Returns the bytes now in huge-page memory.

    A tensor reached twice (tied weights) gets one copy, so what was shared stays shared; a view
    into a bigger tensor stays where it is (copying it would keep both). Nothing moves where the
    copies would not leave room (room_for)."""
    tensor_lists = list(tensor_lists)
    everything = [*model.parameters(), *model.buffers(), *(t for tensors in tensor_lists for t in tensors)]
    if not room_for(sum(t.nbytes for t in everything if t.device.type == "cpu")):
        log.info("weights stay in 4 KB pages: not enough free memory for a copy of them")
        return 0
    copies: dict[tuple, torch.Tensor] = {}
    done: set[int] = set()

    def moved(tensor: torch.Tensor) -> torch.Tensor:
        if not owns_its_memory(tensor) or tensor.data_ptr() in done:
            return tensor
        key = (tensor.data_ptr(), tensor.dtype, tensor.shape)
        if key not in copies:
            copies[key] = huge_page_copy(tensor) if tensor.nbytes >= HUGE_PAGE else tensor.clone()
            done.add(copies[key].data_ptr())
        return copies[key]

    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            parameter.data = moved(parameter.data)  # (the same Parameter: optimizers, ties keep it)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None:
                module._buffers[name] = moved(buffer)
    for tensors in tensor_lists:
        tensors[:] = [moved(t) for t in tensors]
    total = sum(t.nbytes for t in copies.values() if t.nbytes >= HUGE_PAGE)
    log.debug("%.0f MB of tensors in huge-page memory", total / 2**20)
    return total
