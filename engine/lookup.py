"""Prompt-lookup drafts for speculative decoding (torch-free).

An edit often repeats text the prompt already holds: a renamed identifier, a second branch
like the first, the closing of a block. When the last tokens generated also occur earlier in
the prompt or the completion, the tokens that followed them there are a cheap guess of what
comes next. The model then checks the whole guess in one forward pass over the KV cache
(engine.generate.TokenStream) and keeps the part it would have generated itself, so greedy
output is exactly that of plain decoding.
"""

from __future__ import annotations

import numpy as np

MAX_NGRAM = 3
MIN_NGRAM = 2
"""Match the last 3 tokens, else the last 2 (a single token matches too often to be worth a pass)."""
DRAFT_START = 3
DRAFT_GROWTH = 4
DRAFT_MAX = 7
"""Draft length: TokenStream starts at DRAFT_START and adapts to what the drafts earn (grows by
DRAFT_GROWTH while they are kept whole), up to DRAFT_MAX. While drafts are kept whole, 4 or 8 tokens
are checked with the token they follow: on AVX-512 the C decode step checks fp32 and bf16 rows four
tokens to a pass over the weights (shipped model, 2-core EPYC, one thread: 4 tokens cost 0.9-1.1x
one, 5 cost 1.2x, 8 1.5x, 9 1.8x). After a cut, a draft is what was kept, plus DRAFT_GROWTH."""


class PromptLookup:
    """Prompt + generated tokens in one array, searched when a draft is wanted.

    Searching on demand (a few vectorized comparisons over the array) costs tens of
    microseconds per decode step; indexing the prompt up front cost about 1.3 ms for a
    2,000-token prompt on every keystroke, most of which never decode that far."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = np.empty(max(64, 2 * len(tokens)), dtype=np.int64)
        self._tokens[: len(tokens)] = tokens
        self._length = len(tokens)

    def add(self, token: int) -> None:
        if self._length == len(self._tokens):
            self._tokens = np.concatenate([self._tokens, np.empty_like(self._tokens)])
        self._tokens[self._length] = token
        self._length += 1

    def draft(self, limit: int = DRAFT_MAX) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the newest n-gram
        (longest n first); an occurrence counts only if something followed it."""
        tokens, length = self._tokens, self._length
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            starts = length - n  # occurrences may start at 0 .. length - n - 1: before the newest one
            if starts <= 0:
                continue
            found = tokens[:starts] == tokens[length - n]
            for j in range(1, n):
                found &= tokens[j : starts + j] == tokens[length - n + j]
            hits = np.flatnonzero(found)
            if hits.size:
                start = int(hits[-1]) + n
                return tokens[start : min(start + limit, length)].tolist()
        return []

    def draft_after(self, token: int, limit: int = DRAFT_MAX) -> list[int]:
        """The draft to follow `token` before it is added (it is, when it is emitted)."""
        self.add(token)
        try:
            return self.draft(limit)
        finally:
            self._length -= 1
