"""What a report section is: tables with fixed columns, figures, headline numbers (next to the papers'), and
the progress line of a long measurement.

A table's columns are declared by the code that makes it, never read off the data: a quantity that is
missing for one row (a fifth principal component of a drift of rank 3, a block without a sign flip) is NaN
in that row, so the same analysis gives the same columns on every machine, whatever the rounding.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from typing import Any, Callable, Sequence

from absl import logging

from weibull_jax import reference


@dataclasses.dataclass
class Table:
    """Rows under fixed ``columns``; a row may leave a column out (it reads NaN) but never add one."""

    columns: tuple[str, ...]
    rows: list[dict]

    def __post_init__(self):
        self.columns = tuple(self.columns)
        for row in self.rows:
            extra = set(row) - set(self.columns)
            if extra:  # the code that made the rows and the one that declared the columns disagree
                raise AssertionError(f"row keys {sorted(extra)} are not among the columns {self.columns}")

    def cells(self) -> list[list[Any]]:
        return [[row.get(c, math.nan) for c in self.columns] for row in self.rows]

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(self.cells())


def table(rows: list[dict], columns: Sequence[str] | None = None) -> Table:
    """A table of ``rows``; the columns are ``columns`` or, for rows that all share one set of keys by
    construction, the first row's keys (checked against every other row)."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    return Table(tuple(columns), rows)


def padded(prefix: str, values: Sequence[float], width: int) -> dict[str, float]:
    """``{prefix_1: v_1, …, prefix_width: v_width}``, NaN past the end of ``values`` (a fixed set of columns)."""
    return {f"{prefix}_{i + 1}": float(values[i]) if i < len(values) else math.nan for i in range(width)}


@dataclasses.dataclass
class Comparison:
    """One headline number of ours next to the paper's (``paper`` is the text the paper gives, with source)."""

    quantity: str
    ours: str
    paper: str
    source: str


@dataclasses.dataclass
class Section:
    """One part of a report: its numbers for ``report.json``, its tables (→ ``tables/{name}.csv``), the paths
    of the figures it drew, and its headline numbers next to the papers'."""

    title: str
    numbers: dict = dataclasses.field(default_factory=dict)
    tables: dict[str, Table] = dataclasses.field(default_factory=dict)
    figures: list[str] = dataclasses.field(default_factory=list)
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)

    def compare(self, quantity: str, ours: str, paper_key: str) -> None:
        """Adds our ``quantity`` next to the paper's number ``reference.PAPER_HEADLINES[paper_key]``."""
        self.comparisons.append(Comparison(quantity, ours, *reference.PAPER_HEADLINES[paper_key]))


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``what i/n (detail), elapsed, ETA`` log lines for a loop of ``n`` items of roughly equal cost, at most one
    every ``every`` seconds (and always the last)."""

    def __init__(self, what: str, total: int, every: float = 2.0, log: Callable[..., None] = logging.info):
        self.what, self.total, self.every, self.log = what, total, every, log
        self.start = self.last = time.perf_counter()

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else math.nan
        self.log("%s %d/%d%s  elapsed %s  ETA %s", self.what, done, self.total, f" ({detail})" if detail else "",
                 clock(elapsed), clock(eta) if math.isfinite(eta) else "?")
