"""The benchmark table: mean and 95 % confidence interval over seeds, per task x init x test set x metric.

Each finished run contributes one value per (test set, metric). Over its ``n`` seeds a cell
reports the mean and the half-width ``t_{0.975, n-1} * s / sqrt(n)`` of the two-sided 95 %
confidence interval of the mean (Student's t, ``s`` the sample standard deviation), so the
spread over seeds is visible next to every mean. One seed gives no interval (shown as
``n=1``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy import stats

LOWER_IS_BETTER = ("hd95", "mae", "loss", "rmse")
"""Metric names (or suffixes) where a smaller value is better; everything else: larger is better."""


@dataclass(frozen=True)
class RunResult:
    """One metric of one test set of one finished run."""

    task: str
    init: str
    seed: int
    test_set: str
    metric: str
    value: float


@dataclass(frozen=True)
class Cell:
    """Summary over seeds of one (task, init, test set, metric)."""

    task: str
    init: str
    test_set: str
    metric: str
    n: int
    mean: float
    std: float
    ci_half_width: float
    seeds: tuple[int, ...]

    @property
    def ci_low(self) -> float:
        return self.mean - self.ci_half_width

    @property
    def ci_high(self) -> float:
        return self.mean + self.ci_half_width


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, sample std, half-width of the two-sided t interval)``; std and half-width are NaN for n < 2."""
    if not values:
        raise ValueError("confidence_interval needs at least one value.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}; use a value in (0, 1), e.g. 0.95.")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def summarise(results: Iterable[RunResult], level: float = 0.95) -> list[Cell]:
    """One :class:`Cell` per (task, init, test set, metric), in first-seen order; NaN values are dropped."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in results:
        if not math.isnan(r.value):
            groups[(r.task, r.init, r.test_set, r.metric)].append((r.seed, float(r.value)))
    cells = []
    for (task, init, test_set, metric), pairs in groups.items():
        pairs.sort()
        mean, std, half = confidence_interval([v for _, v in pairs], level)
        cells.append(Cell(task, init, test_set, metric, len(pairs), mean, std, half, tuple(s for s, _ in pairs)))
    return cells


def write_csv(cells: Sequence[Cell], path: Path) -> None:
    """All cells, one row each (with ci_low / ci_high)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["task", "init", "test_set", "metric", "n", "mean", "std", "ci_half_width", "ci_low", "ci_high", "seeds"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for cell in cells:
            row = asdict(cell)
            row.update(ci_low=cell.ci_low, ci_high=cell.ci_high, seeds=" ".join(map(str, cell.seeds)))
            writer.writerow(row)


def format_cell(cell: Cell | None, digits: int = 3) -> str:
    if cell is None:
        return "n/a"
    if cell.n < 2:
        return f"{cell.mean:.{digits}f} (n=1)"
    return f"{cell.mean:.{digits}f} ± {cell.ci_half_width:.{digits}f}"


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(name == m or name.endswith(m) for m in LOWER_IS_BETTER)


def markdown_table(cells: Sequence[Cell], inits: Sequence[str] | None = None, metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per (task, test set, metric), one column per init; best mean in bold.

    Args:
        inits: column order (default: first-seen order).
        metrics: metrics to show (default: all).
    """
    inits = list(inits) if inits else list(dict.fromkeys(c.init for c in cells))
    by_key = {(c.task, c.test_set, c.metric, c.init): c for c in cells if metrics is None or c.metric in metrics}
    rows = list(dict.fromkeys((t, s, m) for t, s, m, _ in by_key))
    seeds = sorted({c.n for c in by_key.values()})
    lines = [
        "| task | test set | metric | " + " | ".join(inits) + " |",
        "|---|---|---|" + "---|" * len(inits),
    ]
    for task, test_set, metric in rows:
        row = [by_key.get((task, test_set, metric, init)) for init in inits]
        present = [c.mean for c in row if c is not None]
        best = (min if lower_is_better(metric) else max)(present) if present else None
        texts = [f"**{format_cell(c)}**" if c is not None and c.mean == best and len(present) > 1 else format_cell(c) for c in row]
        arrow = "↓" if lower_is_better(metric) else "↑"
        lines.append(f"| {task} | {test_set} | {metric} {arrow} | " + " | ".join(texts) + " |")
    lines.append("")
    lines.append(
        f"Cells: mean ± half-width of the 95 % t confidence interval over seeds (n = {', '.join(map(str, seeds)) or '0'} "
        "per cell); ↑ higher is better, ↓ lower is better; bold = best mean of the row."
    )
    return "\n".join(lines) + "\n"
