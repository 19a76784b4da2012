"""Exact and near-duplicate detection: SHA-256 of the text, MinHash + LSH over token shingles.

Near-duplicates (forks of a file, copies with a changed header) are found as in the
StarCoder / The Stack pipeline: Jaccard similarity of the sets of 5-token shingles,
estimated by MinHash signatures, with LSH banding to find candidates without comparing
every pair. Hashing is deterministic (crc32 + multiply-shift), so a corpus deduplicates the
same way in every process. Small enough to keep here rather than add a dependency.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

TOKEN = re.compile(r"\w+|[^\w\s]")
_MASK32 = np.uint64(0xFFFFFFFF)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shingle_hashes(text: str, width: int) -> np.ndarray:
    """The distinct crc32 hashes (n,) of the text's `width`-token shingles."""
    tokens = TOKEN.findall(text)
    if len(tokens) < width:
        shingles = [" ".join(tokens)]
    else:
        shingles = [" ".join(tokens[i : i + width]) for i in range(len(tokens) - width + 1)]
    return np.unique(np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingles), dtype=np.uint64))


class NearDuplicateIndex:
    """MinHash signatures in LSH buckets; `add` answers whether a document is a near-duplicate.

    With `bands` x `rows` = `num_perm`, two documents of Jaccard similarity s share a
    bucket with probability 1 - (1 - s^rows)^bands (16 x 8: 0.98 at s = 0.85, 0.01 at
    s = 0.4); candidates are then confirmed by the signatures' estimated similarity.
    """

    def __init__(
        self, threshold: float = 0.85, num_perm: int = 128, bands: int = 16, shingle: int = 5, seed: int = 1
    ) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm {num_perm} must be a multiple of bands {bands}")
        self.threshold, self.bands, self.rows, self.shingle = threshold, bands, num_perm // bands, shingle
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: h(x) = ((a * x + b) mod 2^64) >> 32 with odd a; uint64 wraps.
        self.a = (rng.integers(0, 2**63, num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []
        self.names: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature (num_perm,) uint32."""
        hashes = shingle_hashes(text, self.shingle)
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(hashes), 8192):  # bound the (num_perm, chunk) temporary
            chunk = hashes[start : start + 8192]
            with np.errstate(over="ignore"):
                mixed = (self.a[:, None] * chunk[None, :] + self.b[:, None]) >> np.uint64(32)
            sig = np.minimum(sig, mixed.min(axis=1))
        return (sig & _MASK32).astype(np.uint32)

    def add(self, name: str, text: str) -> str | None:
        """Index the document unless it nearly duplicates one already indexed; return that one's name."""
        sig = self.signature(text)
        keys = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates = sorted({other for band, key in enumerate(keys) for other in self.buckets[band].get(key, ())})
        for other in candidates:
            if float(np.mean(self.signatures[other] == sig)) >= self.threshold:
                return self.names[other]
        index = len(self.signatures)
        self.signatures.append(sig)
        self.names.append(name)
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(index)
        return None
