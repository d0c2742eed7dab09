"""Interleaved comparisons: every benchmark's sides take turns, so that drift on a shared host hits all alike.

A side is a name and a callable that runs one repetition and returns its figures (metric -> value), with
an optional session (a context manager around all its repetitions: a server to start, a model to load)
that yields that callable. `interleave` opens every session, runs one unrecorded warm-up repetition per
side, then `rounds` rounds in which each side runs once, the order reversed every other round (A B, B A,
A B, ...: ABBA cancels a linear drift). `Comparison` holds the per-round figures; its summaries are
medians with min-max, and a ratio is the ratio of the medians with the range of the per-round ratios
(paired: each round's two figures were taken a few seconds apart). `print_figures` prints the table
last, as every benchmark here does.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

Figures = dict[str, float]  # one repetition's figures, by metric
Repetition = Callable[[], Figures]


@contextmanager
def _no_session(repetition: Repetition) -> Iterator[Repetition]:
    yield repetition


@dataclass(frozen=True)
class Side:
    """One side of a comparison: `repetition`, or a `session` that yields it (set up once, torn down once)."""

    name: str
    repetition: Repetition | None = None
    session: Callable[[], AbstractContextManager[Repetition]] | None = None

    def open(self) -> AbstractContextManager[Repetition]:
        if self.session is not None:
            return self.session()
        if self.repetition is None:
            raise ValueError(f"side {self.name!r} has neither a repetition nor a session")
        return _no_session(self.repetition)


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    def format(self, spec: str = ".1f") -> str:
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"


def summarize(values: Sequence[float]) -> Stat:
    """Median with min-max; NaN for no values (a side that never ran)."""
    if not values:
        nan = float("nan")
        return Stat(nan, nan, nan)
    return Stat(statistics.median(values), min(values), max(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Stat:
    """The ratio of the medians, spread as the range of the per-round ratios (rounds paired by index)."""
    per_round = [a / b for a, b in zip(numerator, denominator, strict=True) if b]
    if not per_round:
        return summarize([])
    return Stat(statistics.median(numerator) / statistics.median(denominator), min(per_round), max(per_round))


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Forward on even rounds, reversed on odd ones: A B C, C B A, A B C, ..."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


@dataclass
class Comparison:
    """Per side, per metric, the figure of every recorded round, in round order."""

    sides: list[str]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def record(self, side: str, figures: Figures) -> None:
        per_metric = self.values.setdefault(side, {})
        for metric, value in figures.items():
            per_metric.setdefault(metric, []).append(value)

    def metrics(self) -> list[str]:
        """Every metric any side reported, in the order first seen."""
        seen: dict[str, None] = {}
        for side in self.sides:
            seen.update(dict.fromkeys(self.values.get(side, {})))
        return list(seen)

    def series(self, side: str, metric: str) -> list[float]:
        return self.values.get(side, {}).get(metric, [])

    def stat(self, side: str, metric: str) -> Stat:
        return summarize(self.series(side, metric))

    def ratio(self, numerator: str, denominator: str, metric: str) -> Stat:
        return paired_ratio(self.series(numerator, metric), self.series(denominator, metric))


def interleave(
    sides: Sequence[Side],
    rounds: int,
    *,
    warmup: bool = True,
    before_round: Callable[[int], None] | None = None,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Comparison:
    """Open every side's session, then run `rounds` rounds, each side once per round, order alternating."""
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must be distinct: {names}")
    result = Comparison(sides=names)
    with ExitStack() as stack:
        runs = {s.name: stack.enter_context(s.open()) for s in sides}
        if warmup:
            for name in names:
                runs[name]()  # first-use costs (connections, caches) are nobody's figure
        for r in range(rounds):
            if before_round is not None:
                before_round(r)
            for name in round_order(names, r):
                figures = runs[name]()
                result.record(name, figures)
                say(
                    f"round {r + 1}/{rounds} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
                )
    return result


def figures_table(
    result: Comparison,
    ratios: Sequence[tuple[str, str]] = (),
    *,
    metrics: Sequence[str] | None = None,
    spec: str = ".1f",
    specs: Mapping[str, str] | None = None,
) -> list[str]:
    """A markdown table: a row per metric, each side's median (min-max), then each ratio a / b
    as the ratio of the medians (range of the per-round ratios); `specs` formats some metrics apart."""
    header = ["metric", *result.sides, *(f"{a} / {b}" for a, b in ratios)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics if metrics is not None else result.metrics():
        fmt = (specs or {}).get(metric, spec)
        cells = [metric, *(result.stat(s, metric).format(fmt) for s in result.sides)]
        cells += [result.ratio(a, b, metric).format(".3f") for a, b in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def print_figures(title: str, lines: Sequence[str], notes: Sequence[str] = ()) -> None:
    """A blank line, the title, notes, then the figures: the last thing a benchmark prints."""
    print()
    print(title)
    for note in notes:
        print(note)
    print()
    for line in lines:
        print(line)


def describe(rounds: int) -> str:
    """The line that says how the figures of a table were taken."""
    return (
        f"{rounds} interleaved round(s), order reversed every other round (ABBA); "
        "median (min-max) per side; ratio of the medians (min-max of the per-round ratios)"
    )
