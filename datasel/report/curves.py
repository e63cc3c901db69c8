"""Reading the training curves (:mod:`datasel.training.curves`): the "still rising" warning and the curves figure.

The rule. A run is *still rising* when, between its last two curve points, the validation accuracy averaged over
its seeds rose by at least ``report.rising_points`` accuracy points (default 1) **and** it rose in a majority of
the seeds. Why this rule:

- the last interval is where a long enough budget has flattened out: under the cosine schedule the learning rate is
  smallest there, so a model that still gains a point in that last 1/``curve_points`` of its training would gain
  more with a longer budget, and the subsets' ranking measured now would not be the one at convergence;
- one point is "clearly above" the evaluation's own noise: consecutive evaluations of one model on one validation
  split differ by a few tenths of a point when it has converged (measured on MNIST-1D, 720 validation rows), and
  the seed mean shrinks that further;
- the majority of seeds guards against one seed's late jump carrying the mean.

The report checks the full data and the method chosen on validation at each kept fraction: those are the numbers
the recommendation rests on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from datasel.report.plots import save_figure

# report.rising_points' default: accuracy points gained over the last curve interval that count as "still rising"
RISING_POINTS = 1.0
RISING_PREFIX = "accuracy still rising at the last step"


def last_rise(curves: pl.DataFrame, method: str, fraction: float, since_half: bool = False) -> dict[str, float] | None:
    """For one (method, kept fraction): per seed, validation accuracy at the last curve point minus the one
    before (``since_half``: minus the first point at or past half the run's steps); returns the mean rise, the share
    of seeds that rose, the two mean accuracies and the steps between (None with fewer than two curve points)."""
    part = curves.filter((pl.col("split") == "val") & (pl.col("metric") == "accuracy")
                         & (pl.col("method") == method) & ((pl.col("fraction") - fraction).abs() < 1e-9))
    rises, lasts, prevs, gaps = [], [], [], []
    for _, seed in part.sort("step").group_by("seed", maintain_order=True):
        if seed.height < 2:
            continue
        values, steps = seed.get_column("value").to_list(), seed.get_column("step").to_list()
        i = len(steps) - 2
        if since_half:
            half = seed.get_column("steps").max() / 2
            i = min(next(k for k, st in enumerate(steps) if st >= half), len(steps) - 2)
        rises.append(values[-1] - values[i])
        lasts.append(values[-1])
        prevs.append(values[i])
        gaps.append(steps[-1] - steps[i])
    if not rises:
        return None
    n = len(rises)
    return {"rise": sum(rises) / n, "rose_share": sum(r > 0 for r in rises) / n, "last": sum(lasts) / n,
            "previous": sum(prevs) / n, "steps": sum(gaps) / n, "seeds": float(n)}


def is_rising(r: dict[str, float], points: float = RISING_POINTS) -> bool:
    return r["rise"] * 100 >= points and r["rose_share"] > 0.5


def flat(curves: pl.DataFrame | None, method: str, fraction: float, points: float = RISING_POINTS) -> bool | None:
    """Whether the run's validation curve was flat over the second half of its training (not rising by the rule
    above from its first point past half the steps to its last); None when it has no curve. The whole second half,
    not the last interval: under a decaying learning rate the last interval is flat even when the model is far from
    its plateau."""
    if curves is None or curves.height == 0:
        return None
    r = last_rise(curves, method, fraction, since_half=True)
    return None if r is None else not is_rising(r, points)


def rising_warning(curves: pl.DataFrame | None, runs: Iterable[tuple[str, float]],
                   points: float = RISING_POINTS) -> str | None:
    """The warning (starting with :data:`RISING_PREFIX`) naming every run of ``runs`` — (method, kept fraction)
    pairs, ``("full", 1.0)`` for the full data — that is still rising (the rule above), or None."""
    if curves is None or curves.height == 0:
        return None
    from datasel.selection.make import selection_name

    found = []
    for method, fraction in dict.fromkeys(runs):
        r = last_rise(curves, method, fraction)
        if r is not None and is_rising(r, points):
            found.append(f"`{selection_name(method, fraction)}` rose from {100 * r['previous']:.2f}% to "
                         f"{100 * r['last']:.2f}% validation accuracy over its last {r['steps']:.0f} steps "
                         f"({r['rose_share']:.0%} of {r['seeds']:.0f} seeds rose)")
    if not found:
        return None
    return (f"{RISING_PREFIX}: {'; '.join(found)}. The models had not converged, so a longer budget could reorder "
            f"the subsets (rule: a mean rise of at least {points:g} accuracy point{'' if points == 1 else 's'} over "
            "the last curve interval, in most seeds); raise training.budget (steps or epochs) and rerun")


def plot_curves(curves: pl.DataFrame, runs: Sequence[tuple[str, float]], out: Path, title: str = "") -> None:
    """Mean validation accuracy (over seeds) against the training step for each (method, kept fraction) of
    ``runs`` that has curve rows, e.g. full data, random and the chosen method at one kept fraction."""
    from datasel.selection.make import selection_name

    fig, ax = plt.subplots(figsize=(6, 4))
    acc = curves.filter((pl.col("split") == "val") & (pl.col("metric") == "accuracy")) if curves.height else None
    for method, fraction in dict.fromkeys(runs) if acc is not None else ():
        part = (acc.filter((pl.col("method") == method) & ((pl.col("fraction") - fraction).abs() < 1e-9))
                .group_by("step").agg(pl.col("value").mean()).sort("step"))
        if part.height == 0:
            continue
        ax.plot(part.get_column("step").to_numpy(), 100 * part.get_column("value").to_numpy(), marker="o",
                label=selection_name(method, fraction), color="black" if method == "random" else None,
                ls="--" if method == "full" else "-")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (%), mean over seeds")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out, dpi=110)
