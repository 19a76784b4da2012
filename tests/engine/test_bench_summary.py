"""engine.bench's llama.cpp cells: two rounds side by side, from three the median and range."""

from engine.bench import ratio, summary


def test_two_rounds_are_shown_side_by_side():
    assert summary([ratio(110, 100), ratio(90, 100)]) == "1.10x (110 / 100), 0.90x (90 / 100)"


def test_from_three_rounds_the_median_and_range():
    figures = [ratio(ours, 100) for ours in (125, 94, 109, 100, 131)]
    assert summary(figures) == "median 1.09x (0.94-1.31x, 5 rounds)"
