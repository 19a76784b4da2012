from __future__ import annotations

import pytest

from engine.postprocess import CursorContext, Edit, enough, finish, indent_unit, wants_multiline


def context(text: str) -> CursorContext:
    """The context at the "|" in text."""
    offset = text.index("|")
    text = text.replace("|", "")
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    return CursorContext.around(text, offset, line_start, len(text) if line_end < 0 else line_end)


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("x = foo(|)\n", "auto", False),  # text after the cursor: one line
        ("def f(x):|\n", "auto", True),  # at the end of a block opener
        ("def f(x):\n    |\n", "auto", True),  # on the empty line after one
        ("if (x) {\n  |\n}", "auto", True),
        ("x = 1\n|\n", "auto", False),  # an empty line, no block opened
        ("total = |", "auto", False),
        ("x = foo(|)\n", "always", True),
        ("def f(x):\n    |\n", "never", False),
    ],
)
def test_single_or_multi_line(text, mode, expected):
    assert wants_multiline(context(text), mode) is expected


def test_single_line_mode_stops_at_the_line_end():
    assert finish("1\ny = 2", context("x = |"), False, 16) == Edit("1")


def test_nothing_useful_is_never_sent():
    ctx = context("x = |")
    for raw in ("", "   ", "\n\n", "\t \n  ", "\x00\x01"):
        assert finish(raw, ctx, True, 16) is None


def test_stops_where_it_repeats_the_next_line():
    ctx = context("def f(x):\n    |\n    return y\n")
    assert finish("y = x * 2\n    return y\n\ndef g():", ctx, True, 16) == Edit("y = x * 2")


def test_a_completion_that_only_repeats_the_next_line_is_dropped():
    assert finish("return y", context("def f(x):\n    |\n    return y\n"), True, 16) is None


def test_repeated_lines_are_cut():
    ctx = context("def f(items):\n    |\n")
    raw = "total = 0\n    total = 0\n    total = 0"
    assert finish(raw, ctx, True, 16) == Edit("total = 0")


def test_repeating_the_line_above_is_cut():
    assert finish("x = compute(a)", context("    x = compute(a)\n    |\n"), True, 16) is None


def test_the_closing_line_of_the_block_is_kept_unless_the_document_has_it():
    ctx = context("if (a) {\n  if (b) {\n    |\n")
    assert finish("go();\n  }\n}", ctx, True, 16) == Edit("go();\n  }")
    ctx = context("if (a) {\n  if (b) {\n    |\n  }\n}\n")
    assert finish("go();\n  }\n}", ctx, True, 16) == Edit("go();")


def test_block_ends_where_indentation_returns_to_the_opener():
    ctx = context("def f(x):|\n")
    raw = "\n    y = x + 1\n    return y\n\ndef g():\n    pass"
    assert finish(raw, ctx, True, 16) == Edit("\n    y = x + 1\n    return y")


def test_a_closing_brace_ends_the_block_and_is_kept():
    ctx = context("int f(int x) {|\n")
    assert finish("\n  return x;\n}\n\nint g() {", ctx, True, 16) == Edit("\n  return x;\n}")


def test_max_lines():
    ctx = context("def f(x):\n    |\n")
    raw = "\n    ".join(f"a{i} = {i}" for i in range(10))
    assert finish(raw, ctx, True, 3).text.count("\n") == 2


def test_auto_closed_brackets_extend_the_range():
    assert finish("a, b)", context("print(|)\n"), False, 16) == Edit("a, b)", replace=1)
    assert finish('name"]', context('row["|"]'), False, 16) == Edit('name"]', replace=2)
    assert finish("x) + 1", context("f(|)"), False, 16) == Edit("x) + 1", replace=1)


def test_closers_the_completion_balances_itself_are_the_users():
    """The user's own ")" stays when the completion opens and closes its brackets itself."""
    assert finish("len(x)", context("print(|)\n"), False, 16) == Edit("len(x)")
    assert finish("a, bar(b)", context("x = foo(|)"), False, 16) == Edit("a, bar(b)")
    assert finish("a && (b || c)", context("if (|) {"), False, 16) == Edit("a && (b || c)")
    assert finish("foo(x)", context("print(|);"), False, 16) == Edit("foo(x)")
    assert finish("len(x))", context("print(|)"), False, 16) == Edit("len(x))", replace=1)


def test_without_the_closing_bracket_the_range_stays():
    assert finish("a, b", context("print(|)\n"), False, 16) == Edit("a, b")


def test_a_completion_equal_to_the_rest_of_the_line_is_dropped():
    assert finish(")", context("print(|)\n"), False, 16) is None


def test_a_closer_the_completion_repeats_is_replaced_not_doubled():
    # "]" follows the cursor and the model wrote it too: the item covers the existing one.
    assert finish("x]", context("a[|]) + 1"), False, 16) == Edit("x]", replace=1)


def test_doubled_indentation_is_removed():
    # The editor already indented the empty line; the model indents again.
    ctx = context("def f(x):\n    |\n")
    assert finish("    y = x\n        return y", ctx, True, 16) == Edit("y = x\n    return y")


def test_indentation_at_column_zero_is_kept():
    ctx = context("def f(x):\n|\n")
    assert finish("    return x", ctx, True, 16) == Edit("    return x")


def test_tabs_and_spaces_follow_the_document():
    spaces = context("def f(x):\n    if x:\n        pass\n    |\n")
    assert finish("for i in x:\n\t\tprint(i)", spaces, True, 16) == Edit("for i in x:\n        print(i)")
    tabs = context("func f() {\n\tif x {\n\t\ty()\n\t}\n\t|\n")
    assert finish("for {\n        z()\n    }", tabs, True, 16) == Edit("for {\n\t\tz()\n\t}")


def test_indent_unit():
    assert indent_unit(["def f():", "  x = 1", "  if x:", "    y"]) == "  "
    assert indent_unit(["\tx"]) == "\t"
    assert indent_unit(["x"]) == "    "


def test_trailing_whitespace_and_carriage_returns():
    assert finish("y = 1  \r\n    z = 2\r\n\r\n", context("def f():\n    |\n"), True, 16) == Edit("y = 1\n    z = 2")


def test_enough_stops_streaming_early():
    ctx = context("def f(x):|\n")
    assert not enough("\n    y = x", ctx, True, 16)
    assert not enough("\n    y = x\n    return y\n", ctx, True, 16)
    assert enough("\n    y = x\n    return y\n\ndef g():\n", ctx, True, 16)
    assert enough("x\n", context("a = |"), False, 16)
    many = "\n".join("    a = 1" for _ in range(5)) + "\n"
    assert enough(many, context("def f():\n|\n"), True, 3)


def test_a_model_looping_inside_a_line_is_cut_to_one_copy():
    ctx = CursorContext(line_before="    if ")
    assert finish("n-" * 40, ctx, False, 16) == Edit("n-")
    assert finish("return a + b" * 20, CursorContext(line_before="    "), True, 16) == Edit("return a + b")
    assert enough("x = b*b*b*b*b*b*b*b*b*", CursorContext(line_before=""), True, 16)


@pytest.mark.parametrize(
    "line", ["x = [0, 0, 0, 0]", "# ================================", "assert a == a", "s = 'abcabcab'"]
)
def test_ordinary_repetitive_code_is_kept(line):
    ctx = CursorContext(line_before="")
    assert finish(line, ctx, False, 16) == Edit(line)
    assert not enough(line, ctx, True, 16)


def test_invalid_utf8_is_never_shown():
    ctx = CursorContext(line_before="    return ")
    assert finish("a + b\ufffd\ufffdx", ctx, False, 16) == Edit("a + bx")
    assert finish("\ufffd", ctx, False, 16) is None
