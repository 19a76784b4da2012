from __future__ import annotations

import itertools
from pathlib import Path

from engine.context import (
    ContextSource,
    SnippetCache,
    best_snippet,
    build_prompt,
    comment_marker,
    context_comments,
    fit_window,
    query_text,
)
from engine.prompts import build_infill_prompt
from engine.session import common_prefix_length


def source_text() -> str:
    """A real, long Python file."""
    import asyncio

    return (Path(asyncio.__file__).parent / "base_events.py").read_text(encoding="utf-8")


def test_window_fits_the_token_budgets(tokenizer):
    text = source_text()
    offset = len(text) // 2
    count = lambda s: len(tokenizer.encode(s))  # noqa: E731
    window = fit_window(text, offset, count, prefix_tokens=600, suffix_tokens=200)
    assert count(window.prefix) <= 600 and count(window.suffix) <= 200
    assert count(window.prefix) > 300 and count(window.suffix) > 50  # not needlessly small
    assert text[window.prefix_start : offset] == window.prefix and text[offset:].startswith(window.suffix)
    assert window.prefix_start == 0 or text[window.prefix_start - 1] == "\n"  # starts on a line


def test_typing_keeps_the_prompt_start_and_the_cache_reusable(tokenizer):
    text = source_text()
    offset = len(text) // 2
    count = lambda s: len(tokenizer.encode(s))  # noqa: E731
    starts, prompts = set(), []
    for typed in ("", "s", "se", "sel", "self", "self.", "self._"):
        doc = text[:offset] + typed + text[offset:]
        window = fit_window(doc, offset + len(typed), count, 600, 200)
        starts.add(window.prefix_start)
        prompts.append(build_infill_prompt(tokenizer, window.prefix, window.suffix, "spm").tokens)
    assert len(starts) == 1
    for before, after in itertools.pairwise(prompts):
        assert common_prefix_length(before, after) >= len(before) - 3  # only the last tokens change


def test_context_comments_name_paths_in_the_documents_comment_syntax(tokenizer):
    count = lambda s: len(tokenizer.encode(s))  # noqa: E731
    sources = [
        ContextSource("src/geometry.py", "import math\n\ndef area(radius):\n    return math.pi * radius ** 2\n"),
        ContextSource("src/other.py", "def unrelated():\n    pass\n"),
    ]
    block = context_comments(sources, "python", "r = area(radius)", count, 500, SnippetCache())
    assert block.startswith("# Path: src/geometry.py\n# import math\n#\n# def area(radius):\n")
    assert block.index("src/geometry.py") < block.index("src/other.py")  # most recently used first
    assert all(line.startswith("#") for line in block.splitlines())
    js = context_comments(sources[:1], "javascript", "area", count, 500, SnippetCache())
    assert js.startswith("// Path: src/geometry.py\n")


def test_context_respects_its_budget(tokenizer):
    count = lambda s: len(tokenizer.encode(s))  # noqa: E731
    sources = [ContextSource(f"f{i}.py", source_text()) for i in range(3)]
    block = context_comments(sources, "python", "def run_until_complete(self, future):", count, 300, SnippetCache())
    assert 0 < count(block) <= 300
    assert context_comments(sources, "python", "x", count, 5, SnippetCache()) == ""


def test_the_snippet_shares_identifiers_with_the_code_being_written():
    target = "def load_checkpoint(path, device):\n    weights = read(path)"
    text = "\n".join(["def alpha():\n    return 1"] * 30 + [target] + ["def omega():\n    return 2"] * 30)
    snippet = best_snippet(text, "model = load_checkpoint(path, device)\nweights = model.weights", max_lines=6)
    assert any("load_checkpoint" in line for line in snippet)
    assert best_snippet(text, "", max_lines=2) == ("def alpha():", "    return 1")  # nothing to match: the start


def test_query_moves_in_steps_of_lines():
    prefix = "".join(f"line{i} = {i}\n" for i in range(40)) + "partial"
    assert query_text(prefix, 40) == query_text(prefix + "ly typed", 40)  # typing on the line: same query
    assert query_text(prefix, 40) == "\n".join(f"line{i} = {i}" for i in range(20, 40))
    shorter = "".join(f"line{i} = {i}\n" for i in range(37)) + "x"
    assert query_text(shorter, 37) == "\n".join(f"line{i} = {i}" for i in range(12, 32))


def test_build_prompt_puts_context_before_the_prefix(tokenizer):
    text = "def add(a, b):\n    return a + b\n\nresult = add(1, 2)\n"
    offset = text.index("add(1")
    sources = (ContextSource("lib/math_utils.py", "def add(x, y):\n    return x + y\n"),)
    prompt = build_prompt(text, offset, 3, "python", sources, tokenizer, 256, 64, 128)
    assert prompt.context and prompt.prefix == prompt.context + text[:offset]
    assert prompt.suffix == text[offset:]
    assert "# Path: lib/math_utils.py" in prompt.context
    assert build_prompt(text, offset, 3, "python", sources, tokenizer, 256, 64, 0).context == ""


def test_prompt_ids_are_the_texts_tokenized_whole(tokenizer):
    """Each part is tokenized once, alone; joined they are what the whole text tokenizes to."""
    text = source_text()
    others = (ContextSource("a.py", source_text()[:5000], ("a", 1)), ContextSource("b.py", "import os\n", ("b", 1)))
    cache = SnippetCache()
    for offset in range(1000, len(text), len(text) // 25):
        line = text.count("\n", 0, offset)
        for sources in (others, ()):
            prompt = build_prompt(text, offset, line, "python", sources, tokenizer, 512, 128, 256, cache)
            assert prompt.prefix_ids == tokenizer.encode(prompt.prefix)
            assert prompt.suffix_ids == tokenizer.encode_infilling(prompt.suffix)


def test_comment_markers():
    assert comment_marker("python") == "#" and comment_marker("lua") == "--" and comment_marker("rust") == "//"


def test_budgets_shrink_together_to_fit_the_models_context():
    from engine.context import fit_budgets

    assert fit_budgets(1024, 320, 512, 4000) == (1024, 320, 512)
    prefix, suffix, context = fit_budgets(1024, 320, 512, 880)
    assert prefix + suffix + context <= 880 and prefix > 2 * suffix and context > 0
    assert fit_budgets(100, 50, 0, -5) == (0, 0, 0)


# ---- other documents cost a bounded amount, and a bad one only its own snippet ----


def test_a_document_the_tokenizer_rejects_costs_only_its_snippet():
    def count(text: str) -> int:
        if "POISON" in text:
            raise RuntimeError("the tokenizer choked")
        return len(text) // 3

    sources = (ContextSource("bad.py", "POISON = 1\n"), ContextSource("good.py", "def helper():\n    pass\n"))
    context = context_comments(sources, "python", "helper", count, 500, SnippetCache())
    assert "good.py" in context and "bad.py" not in context


def test_a_five_megabyte_line_is_scanned_and_tokenized_in_bounded_pieces():
    counted: list[int] = []

    def count(text: str) -> int:
        counted.append(len(text))
        return len(text) // 3

    huge = ContextSource("minified.js", "var a=1;" * 650_000, ("minified", 1))
    assert len(huge.text) > 5_000_000
    cache = SnippetCache()
    context = context_comments((huge,), "javascript", "query words", count, 500, cache)
    assert context and max(counted) < 1_000  # a snippet line is cut, never the whole line
    assert max(len(line) for line in best_snippet(huge.text, "var")) <= 300
    context_comments((huge,), "javascript", "query words", count, 500, cache)
    assert len(counted) == 1  # the same snippet is not tokenized again


def test_context_stops_at_its_deadline():
    sources = (ContextSource("a.py", "def a():\n    pass\n"),)
    assert context_comments(sources, "python", "a", len, 500, SnippetCache(), deadline=0.0) == ""
