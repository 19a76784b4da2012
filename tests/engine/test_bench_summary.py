"""engine.bench's llama.cpp cells: two rounds side by side, from three the median and range."""

from engine.bench import summary


def test_two_rounds_are_shown_side_by_side():
    assert summary([(110, 100), (90, 100)]) == "1.10x (110 / 100), 0.90x (90 / 100)"


def test_from_three_rounds_the_median_and_range():
    figures = [(ours, 100) for ours in (125, 94, 109, 100, 131)]
    assert summary(figures) == "median 1.09x (0.94-1.31x, 5 rounds)"
