"""lsp.lookup_bench's summary: edits sorted by whether lookup applies, rates summed per side."""

from __future__ import annotations

from lsp.lookup_bench import Run, applies, table_rows


def pair(tokens: int, off_s: float, on_s: float, accepted: int, same: bool = True) -> dict[bool, Run]:
    return {
        False: Run(tokens, off_s, 0, 0, "x"),
        True: Run(tokens, on_s, drafted=accepted + 2, accepted=accepted, text="x" if same else "y"),
    }


def test_an_edit_applies_when_most_of_its_completion_was_drafted_and_kept():
    assert applies(pair(10, 1.0, 0.5, accepted=5))
    assert not applies(pair(10, 1.0, 1.0, accepted=4))
    assert not applies(pair(0, 0.0, 0.0, accepted=0))  # nothing generated


def test_rates_are_summed_over_the_edits_before_the_ratio_is_taken():
    runs = [pair(40, 1.0, 0.5, accepted=30), pair(10, 1.0, 1.0, accepted=0, same=False)]
    off, on = table_rows("raw", runs)
    # off: 50 tokens in 2 s = 25/s; on: 50 tokens in 1.5 s = 33/s, 1.33x; kept 30 of 34
    assert off == "| raw | 2 | off | 50 | 25 | 1.00x | - | 1/2 |"
    assert on == "| raw | 2 | on | 50 | 33 | 1.33x | 88% of 34 | 1/2 |"
    assert table_rows("none", []) == ["| none | 0 edits | - | - | - | - | - | - |"]
