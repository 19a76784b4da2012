"""The text around the cursor that the model sees: a token-budgeted window, plus context.

Latency grows with the prompt, so the window is about 3:1 prefix:suffix tokens around
the cursor (llama.cpp's infill does the same). Code Llama has no repository-level FIM
tokens, so snippets of other open documents go before the prefix as comment lines that
name their paths (as Tabby and Continue do).

Everything here is chosen so consecutive keystrokes give prompts with a long common
token prefix, which the engine's KV cache reuses: the window start only moves in
blocks (engine.window.cursor_window), and the snippets only change when another
document changes or the cursor leaves its group of lines.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.tokenizer import Tokenizer
from engine.window import CursorWindow, cursor_window

CHARS_PER_TOKEN = 3
"""First guess for the character window; code averages a little more per Llama token."""
WINDOW_BLOCK = 512
"""The window shrinks, and its start moves, in steps of this many characters."""
SNIPPET_LINES = 24
"""Lines per snippet of another document."""
QUERY_LINES = 20
"""Lines above the cursor whose identifiers pick the snippets."""
QUERY_STEP = 8
"""The query only moves every this many lines, so the snippets (and the cache) stay put."""
MAX_SCANNED_LINES = 20_000
"""Lines of another document searched for a snippet (huge files are cut)."""
MAX_SCANNED_CHARS = 256 * 1024
"""Characters of another document searched for a snippet: a 5 MB one-line file costs no more."""
MAX_SNIPPET_LINE_CHARS = 300
"""Longer lines (minified code, data) are cut to this in a snippet."""
CONTEXT_TIME_SHARE = 0.1
"""Context gathering stops adding snippets after this share of the request's time budget."""

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
HASH_COMMENT = set(
    "python ruby perl r shellscript sh bash zsh fish yaml toml make makefile dockerfile cmake elixir julia "
    "powershell nim coffeescript awk".split()
)
DASH_COMMENT = {"lua", "sql", "haskell", "ada", "elm", "vhdl"}
SEMICOLON_COMMENT = {"lisp", "clojure", "scheme", "racket", "commonlisp", "fennel"}
PERCENT_COMMENT = {"erlang", "tex", "latex", "matlab", "prolog"}

CountTokens = Callable[[str], int]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextSource:
    """Another open document that may lend a snippet."""

    path: str
    """As shown to the model: relative to the workspace root when possible."""
    text: str
    version: tuple = ()
    """Identifies this text (e.g. uri and version) so its snippets can be cached."""


@dataclass(frozen=True)
class PromptParts:
    """The two halves of an infilling prompt, as text and as the token ids the model gets."""

    prefix: str
    """Context comments, then the document's text before the cursor."""
    prefix_ids: list[int]
    """prefix, tokenized as encode(prefix) would (SentencePiece's leading space included)."""
    suffix: str
    """The document's text after the cursor."""
    suffix_ids: list[int]
    """suffix, tokenized without a leading space (encode_infilling)."""
    context: str
    """The context part of the prefix (empty when there is none)."""
    window: CursorWindow


def remembered(cache: OrderedDict, key: Any, make: Callable[[], Any], size: int) -> Any:
    """cache[key], made on first use; the least recently used entry goes past `size`."""
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    return cache[key]


class TokenCounter:
    """Counts tokens by encoding, and keeps the ids of the last few texts: the window that
    fits its budget is then in the prompt without being encoded again."""

    def __init__(self, encode: Callable[[str], list[int]], keep: int = 8) -> None:
        self.encode, self.keep = encode, keep
        self._ids: OrderedDict[str, list[int]] = OrderedDict()

    def ids(self, text: str) -> list[int]:
        return remembered(self._ids, text, lambda: self.encode(text), self.keep)

    def __call__(self, text: str) -> int:
        return len(self.ids(text))


def comment_marker(language_id: str) -> str:
    language = language_id.lower()
    if language in HASH_COMMENT:
        return "#"
    if language in DASH_COMMENT:
        return "--"
    if language in SEMICOLON_COMMENT:
        return ";;"
    if language in PERCENT_COMMENT:
        return "%"
    if language == "vim":
        return '"'
    return "//"


def fit_window(
    text: str,
    offset: int,
    count: CountTokens,
    prefix_tokens: int,
    suffix_tokens: int,
    count_suffix: CountTokens | None = None,
) -> CursorWindow:
    """The largest block-aligned window whose prefix and suffix fit their token budgets."""
    count_suffix = count_suffix or count
    prefix_chars, suffix_chars = prefix_tokens * CHARS_PER_TOKEN, suffix_tokens * CHARS_PER_TOKEN
    while True:
        window = cursor_window(text, offset, prefix_chars, suffix_chars, WINDOW_BLOCK)
        prefix_over = prefix_chars > 0 and count(window.prefix) > prefix_tokens
        suffix_over = suffix_chars > 0 and count_suffix(window.suffix) > suffix_tokens
        if not (prefix_over or suffix_over):
            return window
        if prefix_over:
            prefix_chars = max(0, prefix_chars - WINDOW_BLOCK)
        if suffix_over:
            suffix_chars = max(0, suffix_chars - WINDOW_BLOCK)


def query_text(prefix: str, cursor_line: int) -> str:
    """Lines above the cursor that stand for "what is being written", in steps of QUERY_STEP lines."""
    lines = prefix.split("\n")[:-1]  # complete lines only: the cursor's line changes at each key
    keep = len(lines) - cursor_line % QUERY_STEP
    return "\n".join(lines[max(0, keep - QUERY_LINES) : max(0, keep)])


def best_snippet(text: str, query: str, max_lines: int = SNIPPET_LINES) -> tuple[str, ...]:
    """The run of lines of `text` sharing the most identifiers with `query` (Jaccard), or its start.

    Only the start of a huge document is searched, and long lines are cut, so the cost is
    bounded whatever the document holds."""
    lines = [line[:MAX_SNIPPET_LINE_CHARS] for line in text[:MAX_SCANNED_CHARS].splitlines()[:MAX_SCANNED_LINES]]
    wanted = set(IDENTIFIER.findall(query))
    best, best_score = 0, 0.0
    if wanted:
        for start in range(0, max(1, len(lines) - max_lines // 2), max_lines // 2):
            words = set(IDENTIFIER.findall("\n".join(lines[start : start + max_lines])))
            score = len(words & wanted) / len(words | wanted) if words else 0.0
            if score > best_score:
                best, best_score = start, score
    return tuple(lines[best : best + max_lines])


def format_snippet(path: str, lines: Sequence[str], marker: str) -> str:
    body = "".join(f"{marker} {line}".rstrip() + "\n" for line in lines)
    return f"{marker} Path: {path}\n{body}{marker}\n"


class SnippetCache:
    """Remembers the snippet picked per (document version, query), with its token cost:
    scanning a big file and tokenizing the snippet take milliseconds each."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._snippets: OrderedDict[tuple, tuple[str, ...]] = OrderedDict()
        self._costs: OrderedDict[str, int] = OrderedDict()
        self._ids: OrderedDict[tuple[str, bool], list[int]] = OrderedDict()

    def snippet(self, source: ContextSource, query: str) -> tuple[str, ...]:
        if not source.version:
            return best_snippet(source.text, query)
        return remembered(self._snippets, (source.version, query), lambda: best_snippet(source.text, query), self.size)

    def cost(self, block: str, count: CountTokens) -> int:
        return remembered(self._costs, block, lambda: count(block), self.size)

    def ids(self, block: str, encode: Callable[[str], list[int]], leading: bool) -> list[int]:
        """A block's token ids, encoded once (leading: the first part of a prompt's prefix,
        which gets SentencePiece's leading space)."""
        return remembered(self._ids, (block, leading), lambda: encode(block), self.size)


def context_comments(
    sources: Sequence[ContextSource],
    language_id: str,
    query: str,
    count: CountTokens,
    budget: int,
    cache: SnippetCache,
    deadline: float = math.inf,
) -> str:
    """Snippets of other documents as one text (see context_blocks)."""
    return "".join(context_blocks(sources, language_id, query, count, budget, cache, deadline))


def context_blocks(
    sources: Sequence[ContextSource],
    language_id: str,
    query: str,
    count: CountTokens,
    budget: int,
    cache: SnippetCache,
    deadline: float = math.inf,
) -> list[str]:
    """Snippets of other documents, most recently used first, within `budget` tokens.

    Stops at `deadline` (time.perf_counter): context must not eat the time budget. A
    document that cannot be used (e.g. one the tokenizer chokes on) costs only its snippet."""
    marker = comment_marker(language_id)
    parts = []
    for source in sources:
        if time.perf_counter() > deadline:
            log.info("context gathering stopped at its time share, before %s", source.path)
            break
        try:
            lines = cache.snippet(source, query)
            while lines:
                block = format_snippet(source.path, lines, marker)
                cost = cache.cost(block, count)
                if cost <= budget:
                    parts.append(block)
                    budget -= cost
                    break
                lines = lines[: len(lines) // 2]
        except Exception as e:  # one odd document must not cost every completion elsewhere
            log.warning("no context from %s: %s: %s", source.path, type(e).__name__, e)
    return parts


def fit_budgets(prefix: int, suffix: int, context: int, available: int) -> tuple[int, int, int]:
    """Scale the three token budgets down together so the prompt fits `available` tokens.

    Positions past a model's training length are out of its distribution (the shipped
    model was trained on 1,024-token rows; Code Llama on 16,384).
    """
    total = prefix + suffix + context
    if total <= available:
        return prefix, suffix, context
    scale = max(available, 0) / total
    return int(prefix * scale), int(suffix * scale), int(context * scale)


def build_prompt(
    text: str,
    offset: int,
    cursor_line: int,
    language_id: str,
    sources: Sequence[ContextSource],
    tokenizer: Tokenizer,
    prefix_tokens: int,
    suffix_tokens: int,
    context_tokens: int,
    cache: SnippetCache | None = None,
    context_deadline: float = math.inf,
) -> PromptParts:
    """The prompt's halves for a cursor, each part tokenized once.

    The prefix is the context blocks, then the window's prefix; as one text it would
    tokenize as encode(context + prefix), which equals the parts' ids joined because
    every part starts on a line of its own (SentencePiece pieces do not cross "\\n"):
    the first part with encode (the leading space), the others with encode_infilling.
    """
    cache = cache or SnippetCache()
    with_context = bool(sources) and context_tokens > 0
    prefix_counter = TokenCounter(tokenizer.encode_infilling if with_context else tokenizer.encode)
    suffix_counter = TokenCounter(tokenizer.encode_infilling)
    window = fit_window(text, offset, prefix_counter, prefix_tokens, suffix_tokens, suffix_counter)
    blocks: list[str] = []
    if with_context:
        query = query_text(window.prefix, cursor_line)
        # A snippet the window already shows (a recent edit near the cursor) would only repeat it.
        shown = window.prefix + window.suffix
        sources = [s for s in sources if s.text.strip() and s.text.strip() not in shown]

        def cost(block: str) -> int:
            return len(cache.ids(block, tokenizer.encode_infilling, leading=False))

        blocks = context_blocks(sources, language_id, query, cost, context_tokens, cache, context_deadline)
    if blocks:
        prefix_ids = cache.ids(blocks[0], tokenizer.encode, leading=True)[:]
        for block in blocks[1:]:
            prefix_ids += cache.ids(block, tokenizer.encode_infilling, leading=False)
        prefix_ids += prefix_counter.ids(window.prefix)
    elif with_context:  # no source lent a snippet: the prefix comes first after all
        prefix_ids = tokenizer.encode(window.prefix)
    else:
        prefix_ids = prefix_counter.ids(window.prefix)
    context = "".join(blocks)
    return PromptParts(
        context + window.prefix, prefix_ids, window.suffix, suffix_counter.ids(window.suffix), context, window
    )
