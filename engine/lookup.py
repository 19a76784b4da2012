"""Prompt-lookup drafts for speculative decoding (torch-free).

An edit often repeats text the prompt already holds: a renamed identifier, a second branch
like the first, the closing of a block. When the last tokens generated also occur earlier in
the prompt or the completion, the tokens that followed them there are a cheap guess of what
comes next. The model then checks the whole guess in one forward pass over the KV cache
(engine.generate.TokenStream) and keeps the part it would have generated itself, so greedy
output is exactly that of plain decoding.
"""

from __future__ import annotations

MAX_NGRAM = 3
MIN_NGRAM = 2
"""Match the last 3 tokens, else the last 2 (a single token matches too often to be worth a pass)."""
DRAFT_START = 4
DRAFT_MAX = 8
"""Draft length: TokenStream starts at DRAFT_START and adapts to what the drafts earn, up to DRAFT_MAX."""


class PromptLookup:
    """An index of the n-grams in prompt + generated tokens, kept up to date as tokens are added."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}
        """n-gram -> where its latest occurrence that has a continuation ends (the continuation's start)."""
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        end = len(self.tokens)  # the n-grams ending here now have a continuation: `token`
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            if end >= n:
                self.follows[tuple(self.tokens[end - n : end])] = end
        self.tokens.append(token)

    def draft(self, limit: int = DRAFT_MAX) -> list[int]:
        """Up to `limit` tokens that followed the longest earlier occurrence of the newest n-gram."""
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(self.tokens) < n:
                continue
            start = self.follows.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []
