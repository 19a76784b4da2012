"""The memory-bandwidth bound of a one-token CPU decode, for engine.bench.

A token's decode reads every weight of the model once (the token embedding and the RoPE tables
only a row) and the keys and values of every cached position. On a CPU that read, not the
arithmetic, sets the pace of a big model's decode: how close an engine comes to "the bytes it must
read, at the rate this machine reads them" says how much faster it could get, and two engines near
that bound are at parity for a reason no kernel can change.

The rate is measured, not taken from a data sheet: the weights themselves are read (same pages,
same threads) by engine/cpu_read.c, which computes nothing but an XOR of their words.
"""

from __future__ import annotations

import ctypes
import functools
import statistics
import time
from dataclasses import dataclass
from itertools import chain

import torch

from engine import c_library
from engine.model import Transformer


@dataclass(frozen=True)
class ReadBound:
    """Tokens/s that reading `weight_bytes` plus `bytes_per_position` for each cached position
    allows at `gb_per_s` (10^9 bytes a second)."""

    weight_bytes: int
    bytes_per_position: int
    gb_per_s: float

    def tokens_per_s(self, depth: float) -> float:
        """The bound for a token decoded with `depth` positions in the cache."""
        return self.gb_per_s * 1e9 / (self.weight_bytes + depth * self.bytes_per_position)


def decode_weights(model: Transformer) -> list[torch.Tensor]:
    """The tensors a one-token decode reads in full: all of the model's parameters and buffers
    but the token embedding (unless the output layer shares it) and the RoPE tables."""
    embedding = model.model.embed_tokens.weight
    rows_only = {id(model.rope_cos), id(model.rope_sin)}
    if not any(t is embedding for t in model.lm_head.parameters()):
        rows_only.add(id(embedding))
    return [t for t in chain(model.parameters(), model.buffers()) if id(t) not in rows_only]


def kv_values_per_position(model: Transformer) -> int:
    """Keys and values (numbers) that one cached position adds to every token's read."""
    args = model.args
    return 2 * args.n_layers * args.n_kv_heads * args.head_dim


@functools.cache
def reader() -> ctypes.CDLL:
    """engine.c_library's library with read_buffers' signature (RuntimeError where it cannot be built)."""
    library = c_library.library_or_none()
    if library is None:
        raise RuntimeError("the engine's C library cannot be built here")
    library.read_buffers.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64),
                                     ctypes.c_int, ctypes.c_int]  # fmt: skip
    library.read_buffers.restype = ctypes.c_uint64
    return library


def read_buffers(tensors: list[torch.Tensor], threads: int) -> int:
    """engine/cpu_read.c's read of the tensors' bytes: the XOR of their 64-bit words (and of the
    bytes past each one's last whole word). RuntimeError where the C library cannot be built."""
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        raise ValueError("the read bound is measured on contiguous CPU tensors")
    addresses = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))
    sizes = (ctypes.c_int64 * len(tensors))(*(t.nbytes for t in tensors))
    return reader().read_buffers(addresses, sizes, len(tensors), threads)


def measure(model: Transformer, cache_dtype: torch.dtype, repeats: int = 7) -> ReadBound:
    """The bound for this model as loaded, with torch's thread count: the median of `repeats`
    reads of its decode weights (after one that pages them in), so one slow or lucky moment on
    a shared machine does not set it."""
    tensors = decode_weights(model)
    threads = torch.get_num_threads()
    read_buffers(tensors, threads)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        read_buffers(tensors, threads)
        seconds.append(time.perf_counter() - started)
    weight_bytes = sum(t.nbytes for t in tensors)
    per_position = kv_values_per_position(model) * cache_dtype.itemsize
    return ReadBound(weight_bytes, per_position, weight_bytes / statistics.median(seconds) / 1e9)
