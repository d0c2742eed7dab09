"""bench/harness.py's pure logic: round order, summaries, paired ratios, recording (no timing)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.harness import (
    Comparison,
    Figures,
    Repetition,
    Side,
    figures_table,
    interleave,
    paired_ratio,
    round_order,
    summarize,
)


def test_round_order_alternates_so_that_two_sides_run_abba() -> None:
    order = [name for r in range(4) for name in round_order(["A", "B"], r)]
    assert order == ["A", "B", "B", "A", "A", "B", "B", "A"]


def test_round_order_reverses_every_side_on_odd_rounds() -> None:
    assert round_order(["A", "B", "C"], 0) == ["A", "B", "C"]
    assert round_order(["A", "B", "C"], 1) == ["C", "B", "A"]


def test_summarize_is_median_with_min_max() -> None:
    s = summarize([3.0, 1.0, 10.0, 2.0])
    assert (s.median, s.low, s.high) == (2.5, 1.0, 10.0)
    assert math.isnan(summarize([]).median)


def test_paired_ratio_is_the_ratio_of_medians_with_the_range_of_per_round_ratios() -> None:
    r = paired_ratio([10.0, 20.0, 30.0], [10.0, 10.0, 20.0])
    assert r.median == pytest.approx(20.0 / 10.0)
    assert (r.low, r.high) == (1.0, 2.0)


def test_paired_ratio_needs_paired_rounds() -> None:
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def test_interleave_runs_sessions_once_and_records_every_round_in_order() -> None:
    calls: list[str] = []
    events: list[str] = []

    def rep(name: str) -> Figures:
        calls.append(name)
        return {"x": float(len(calls))}

    @contextmanager
    def session() -> Iterator[Repetition]:
        events.append("open")
        yield lambda: rep("B")
        events.append("close")

    sides = [Side("A", repetition=lambda: rep("A")), Side("B", session=session)]
    result = interleave(sides, rounds=3, say=lambda _line: None)
    assert events == ["open", "close"]
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]  # warm-up, then AB BA AB
    assert result.series("A", "x") == [3.0, 6.0, 7.0]
    assert result.series("B", "x") == [4.0, 5.0, 8.0]


def test_interleave_calls_before_round_ahead_of_each_round() -> None:
    seen: list[str] = []

    def a() -> Figures:
        seen.append("A")
        return {}

    sides = [Side("A", repetition=a), Side("B", repetition=dict)]
    interleave(sides, rounds=2, warmup=False, before_round=lambda r: seen.append(f"r{r}"), say=lambda _: None)
    assert seen == ["r0", "A", "r1", "A"]


def test_interleave_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError):
        interleave([Side("A", repetition=dict), Side("A", repetition=dict)], rounds=1)


def test_figures_table_has_a_row_per_metric_and_a_column_per_side_and_ratio() -> None:
    c = Comparison(sides=["new", "old"])
    for new, old in ((10.0, 5.0), (12.0, 6.0)):
        c.record("new", {"tok/s": new})
        c.record("old", {"tok/s": old})
    lines = figures_table(c, [("new", "old")])
    assert lines[0] == "| metric | new | old | new / old |"
    assert lines[2] == "| tok/s | 11.0 (10.0-12.0) | 5.5 (5.0-6.0) | 2.000 (2.000-2.000) |"
