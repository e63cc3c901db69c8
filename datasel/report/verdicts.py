"""The report's answer: which subset to train on, chosen on validation and judged on test against random.

Three rules keep the answer honest:

- **chosen on validation, judged on test.** At each kept fraction the best method is the one with the best mean
  *validation* metric (``report.choose_on``: accuracy by default); what is reported is its *test* margin over the
  random subset of the same size. Picking the best of ten on test and then reporting that same test margin would
  report the luck of the pick.
- **corrected for the family.** Every method at a kept fraction is compared with random (a two-sided Welch test
  over training seeds); the verdicts are Holm-corrected over those ``m`` comparisons (Holm 1979: sort the p-values,
  the i-th smallest is tested at ``alpha / (m - i + 1)``, testing stops at the first that fails). Each interval is
  the Welch interval at the level its Holm step used (``1 - alpha / (m - i + 1)``; the steps after the stop use the
  stopping step's level), so an interval excludes zero exactly when Holm rejects: the verdict and the interval can
  never disagree. The first step's level is Bonferroni's ``1 - alpha / m``.
- **never "best" when it loses.** The recommendation names a method only when the one chosen on validation beats
  random on test after the correction; otherwise it says that no selection beats random.

Random is a distribution: each training seed trains on its own random subset (:mod:`datasel.selection.draws`), so
the seed spread holds the luck of the draw as well as training noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from datasel.errors import ConfigError

# the family-wise error rate of the verdicts at each kept fraction
ALPHA = 0.05
# a random subset of at most this share reaching the full data's test accuracy means the budget is too small
UNDERTRAINED_FRACTION = 0.5
# a full-data test accuracy at or above this is the task's ceiling: a random half matching it is saturation (the task
# needs no more data), not a budget too short to use the data
SATURATED_ACCURACY = 0.995
BASELINES = ("random", "full")

MARGIN_SCHEMA = {"noise": pl.Float64, "fraction": pl.Float64, "method": pl.String, "accuracy_mean": pl.Float64,
                 "accuracy_std": pl.Float64, "seeds": pl.Int64, "random_mean": pl.Float64, "margin": pl.Float64,
                 "p_value": pl.Float64, "p_holm": pl.Float64, "ci_level": pl.Float64, "ci_low": pl.Float64,
                 "ci_high": pl.Float64, "family_size": pl.Int64, "verdict": pl.String, "beats_random": pl.Boolean}


@dataclass(frozen=True)
class Choice:
    """What the best method per kept fraction is chosen on (``report.choose_on`` in the config)."""

    split: str = "val"
    metric: str = "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "loss"

    def describe(self) -> str:
        return f"{'validation' if self.split == 'val' else self.split} {self.metric}"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Choice:
        cfg = dict(cfg or {})
        split, metric = cfg.get("split", "val"), cfg.get("metric", "accuracy")
        if split not in ("val", "train"):
            raise ConfigError(f"report.choose_on.split is '{split}': the choice must not see the test split",
                              field="report.choose_on.split", fix="use val (default)")
        if metric not in ("accuracy", "loss"):
            raise ConfigError(f"unknown metric '{metric}' to choose on", field="report.choose_on.metric",
                              fix="use accuracy (default) or loss")
        return cls(split, metric)


def welch_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean difference a − b and its Welch t-interval (NaN bounds when a side has fewer than two values)."""
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return diff, diff - half, diff + half


def welch_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean difference a − b and its two-sided Welch p-value (1 when a side has fewer than two values; 0 for a
    nonzero difference between two constant samples, 1 for a zero one)."""
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, 1.0
    if a.var(ddof=1) + b.var(ddof=1) == 0:
        return diff, 0.0 if diff != 0 else 1.0
    return diff, float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], list[float], list[bool]]:
    """Holm's step-down over one family: the adjusted p-values, each hypothesis's interval level, and whether it is
    rejected (in input order). Ties in p keep input order (a stable sort)."""
    m = len(pvalues)
    order = np.argsort(np.asarray(pvalues, dtype=np.float64), kind="stable")
    adjusted, levels, rejected = [1.0] * m, [1.0] * m, [False] * m
    running, stop = 0.0, m  # stop: the 0-based step of the first hypothesis Holm keeps
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * float(pvalues[i])))
        adjusted[i] = running
        if stop == m and float(pvalues[i]) > alpha / (m - step):
            stop = step
    for step, i in enumerate(order):
        levels[i] = 1.0 - alpha / (m - min(step, stop))
        rejected[i] = step < stop
    return adjusted, levels, rejected


def margins(cells: pl.DataFrame, alpha: float = ALPHA) -> pl.DataFrame:
    """Per (noise, fraction, method): test accuracy against random at the same noise and fraction, with the
    Holm-corrected verdict over the methods of that cell (random's and full data's own rows excluded).

    ``cells``: ``fraction, method, value`` (one row per training seed; ``noise`` optional). ``verdict`` is
    ``beats random``, ``loses to random`` or ``no clear difference``.
    """
    if "noise" not in cells.columns:
        cells = cells.with_columns(pl.lit(0.0).alias("noise"))
    rows: list[dict[str, Any]] = []
    for (noise, fraction), part in cells.group_by(["noise", "fraction"], maintain_order=True):
        rand = part.filter(pl.col("method") == "random").get_column("value").to_numpy()
        family = part.filter(~pl.col("method").is_in(BASELINES))
        if len(rand) == 0 or family.height == 0:
            continue
        methods = sorted(family.get_column("method").unique().to_list())
        values = [family.filter(pl.col("method") == m).get_column("value").to_numpy() for m in methods]
        tests = [welch_test(v, rand) for v in values]
        adjusted, levels, rejected = holm([p for _, p in tests], alpha)
        for method, vals, (diff, p), p_adj, level, rej in zip(methods, values, tests, adjusted, levels, rejected):
            _, lo, hi = welch_ci(vals, rand, level)
            verdict = ("beats random" if diff > 0 else "loses to random") if rej else "no clear difference"
            rows.append({"noise": noise, "fraction": fraction, "method": method, "accuracy_mean": float(vals.mean()),
                         "accuracy_std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "seeds": len(vals),
                         "random_mean": float(rand.mean()), "margin": diff, "p_value": p, "p_holm": p_adj,
                         "ci_level": level, "ci_low": lo, "ci_high": hi, "family_size": len(methods),
                         "verdict": verdict, "beats_random": bool(rej and diff > 0)})
    return pl.DataFrame(rows, schema=MARGIN_SCHEMA).sort(["noise", "fraction", "margin"],
                                                         descending=[False, False, True])


def choice_means(metrics: pl.DataFrame, choice: Choice) -> pl.DataFrame:
    """``noise, method, fraction, choice_mean``: the mean over seeds of the metric the best method is chosen on."""
    part = metrics.filter((pl.col("split") == choice.split) & (pl.col("metric") == choice.metric))
    if "noise" not in part.columns:
        part = part.with_columns(pl.lit(0.0).alias("noise"))
    return part.group_by("noise", "method", "fraction").agg(pl.col("value").mean().alias("choice_mean"))


def best_per_fraction(marg: pl.DataFrame, chosen: pl.DataFrame | None,
                      choice: Choice = Choice()) -> list[dict[str, Any]]:
    """Per (noise, kept fraction): the method with the best mean on ``choice`` (validation accuracy by default), with
    its Holm-corrected *test* margin over random. ``chosen``: :func:`choice_means`; where it has no row for a cell
    (a run without a validation split), the choice falls back to test accuracy and ``chosen_on`` says so.
    """
    out = []
    means = chosen if chosen is not None else pl.DataFrame(schema={"noise": pl.Float64, "method": pl.String,
                                                                   "fraction": pl.Float64, "choice_mean": pl.Float64})
    for (noise, fraction), m in marg.filter(~pl.col("method").is_in(BASELINES)).group_by(
            ["noise", "fraction"], maintain_order=True):
        cell = m.join(means, on=["noise", "method", "fraction"], how="left")
        if cell.get_column("choice_mean").null_count() == 0:
            key, chosen_on = "choice_mean", choice.describe()
            descending = choice.higher_is_better
        else:  # no validation metric: say so rather than pass a test-chosen method off as validated
            key, chosen_on, descending = "accuracy_mean", "test accuracy (no validation split: optimistic)", True
        best = cell.sort([key, "method"], descending=[descending, False]).row(0, named=True)
        rand = means.filter((pl.col("noise") == noise) & (pl.col("fraction") == fraction)
                            & (pl.col("method") == "random"))
        out.append({**best, "chosen_on": chosen_on, "choice_higher": descending,
                    "random_choice_mean": rand.item(0, "choice_mean") if rand.height else None})
    return sorted(out, key=lambda r: (r["noise"], r["fraction"]))


def format_points(row: Mapping[str, Any]) -> str:
    """A margin in accuracy points with its corrected interval: "+1.20 [+0.30, +2.10]" ("n/a" with one seed)."""
    bounds = ("n/a" if row["ci_low"] is None or np.isnan(row["ci_low"])
              else f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]")
    return f"{100 * row['margin']:+.2f} {bounds}"


def undertrained(test: pl.DataFrame, full_flat: bool | None = None, off_target: bool = False) -> str | None:
    """A warning when a random subset of at most half the data reaches the full data's mean test accuracy.

    Three readings, told apart by what else is known: with the full data at the accuracy ceiling the task is
    *saturated*; when the full data's validation curve was flat over the second half of its training
    (``full_flat``: the model had reached its plateau, so more steps would not help either) the data is *redundant*
    for this model; otherwise (no curve, or a rising one) the budget may not let the model use more data:
    *under-trained*. On instruction data (``off_target``) the pool is not drawn from the target task the model is
    judged on, so the full pool is no ceiling: most of its rows teach other tasks (*diluted*).

    ``test``: ``method, fraction, value`` test accuracies (one row per seed), ``full`` and ``random`` rows included.
    """
    full = test.filter(pl.col("method") == "full").get_column("value")
    rand = (test.filter((pl.col("method") == "random") & (pl.col("fraction") <= UNDERTRAINED_FRACTION))
            .group_by("fraction").agg(pl.col("value").mean()).sort("fraction", descending=True))
    if full.len() == 0:
        return None
    for fraction, mean in rand.iter_rows():
        reached = (f"a random {fraction:.0%} subset reaches {100 * mean:.2f}% test accuracy, at least the full "
                   f"data's {100 * full.mean():.2f}%")
        if mean >= full.mean() and off_target:
            return (f"diluted: {reached} on the target task: on instruction data most pool rows teach other tasks, "
                    "so more of them need not help and the full pool is no ceiling; judge a selection against "
                    "random, not against the full pool")
        if mean >= full.mean() >= SATURATED_ACCURACY:
            return (f"saturated: a random {fraction:.0%} subset reaches {100 * mean:.2f}% test accuracy, as the full "
                    f"data does ({100 * full.mean():.2f}%): the task is solved with less data, so no selection can "
                    "show an advantage here; compare on a smaller kept fraction or a harder task")
        if mean >= full.mean() and full_flat:
            return (f"redundant: {reached}, and the full data's validation accuracy was flat over the second half "
                    "of its training, so more steps would not help either: this model needs no more than "
                    f"{fraction:.0%} of this data; a selection can only show an advantage at a smaller kept fraction")
        if mean >= full.mean():
            return (f"under-trained: {reached}, so with this budget more data does not help and no margin here says "
                    "which data is better; raise training.budget (steps or epochs) and rerun")
    return None


def recommended(best: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row to train on: among the kept fractions whose method chosen on validation beats random on test (after
    the correction), the one with the best chosen-on mean (then the smallest fraction); None when there is none."""
    winners = [b for b in best if b["beats_random"]]
    if not winners:
        return None

    def rank(b: Mapping[str, Any]) -> float:
        v = b["choice_mean"] if b.get("choice_mean") is not None else b["accuracy_mean"]
        return -v if b["choice_higher"] else v

    return min(winners, key=lambda b: (rank(b), b["fraction"]))


def recommendation(best: Sequence[Mapping[str, Any]], warnings: Sequence[str] = ()) -> str:
    """One sentence a user can act on, from :func:`best_per_fraction` rows of one noise level.

    Names a selection only when :func:`recommended` finds one; otherwise says no selection beats random, and which
    random subset to use instead (the kept fraction whose random subset scored best on the chosen-on metric). A
    warning that changes the answer (under-training, accuracy still rising, saturation) is appended.
    """
    if not best:
        return ("No verdict: the run has no `random` selection to compare with (add `random: {policy: random}` "
                "to selection.policies).")
    w = recommended(best)
    if w is not None:
        family = f"{w['family_size']} method{'s' if w['family_size'] != 1 else ''}"
        text = (f"Train on `{selection_of(w)}` (kept {w['fraction']:.0%}): {format_points(w)} points over random on "
                f"test (Holm-corrected over {family}), chosen on {w['chosen_on']}.")
    else:
        higher = bool(best[0]["choice_higher"])
        rand = [b for b in best if b.get("random_choice_mean") is not None]
        pick = (max(rand, key=lambda b: b["random_choice_mean"] if higher else -b["random_choice_mean"]) if rand
                else max(best, key=lambda b: b["random_mean"]))
        text = (f"No selection beats random here: use a random {pick['fraction']:.0%} subset (or the full data); "
                f"the method chosen on {pick['chosen_on']} at kept {pick['fraction']:.0%}, `{pick['method']}`, is "
                f"{format_points(pick)} points against random on test ({pick['verdict']}).")
    if any(w.startswith("under-trained") for w in warnings):
        text += " But the model is under-trained (see the warnings): raise training.budget before acting on this."
    elif any(w.startswith("accuracy still rising") for w in warnings):  # datasel.report.curves
        text += (" But validation accuracy was still rising at the last step (see the warnings): train longer "
                 "(training.budget) and rerun before acting on this.")
    elif any(w.startswith("saturated") for w in warnings):
        text += " The task is saturated (see the warnings): a random subset already matches the full data."
    elif any(w.startswith("redundant") for w in warnings):
        text += (" The data is redundant for this model (see the warnings): a random subset already matches the "
                 "full data, which had stopped improving.")
    return text


def selection_of(row: Mapping[str, Any]) -> str:
    """The selection name of a (method, fraction) row: ``<method>_keep<percent>``."""
    from datasel.selection.make import selection_name

    return selection_name(row["method"], row["fraction"])


VERDICT_HEADER = ["kept", "chosen method", "chosen-on mean (%)", "test accuracy (%)", "random, test (%)",
                  "test margin over random, points [corrected CI]", "verdict"]


def verdict_rows(best: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The rows of the per-fraction answer table (:data:`VERDICT_HEADER`), in percent."""
    rows = []
    for b in best:
        chosen = "—" if b.get("choice_mean") is None or b["chosen_on"].startswith("test") else (
            f"{100 * b['choice_mean']:.2f}" if b["choice_higher"] else f"{b['choice_mean']:.4f} (loss)")
        rows.append([f"{b['fraction']:.0%}", f"`{selection_of(b)}`", chosen,
                     f"{100 * b['accuracy_mean']:.2f} ± {100 * b['accuracy_std']:.2f}",
                     f"{100 * b['random_mean']:.2f}",
                     format_points(b), b["verdict"]])
    return rows


def method_note(best: Sequence[Mapping[str, Any]], alpha: float = ALPHA) -> str:
    """The line under the answer table: how the method was chosen and how the verdict was corrected."""
    sizes = sorted({int(b["family_size"]) for b in best})
    family = (f"{sizes[0]} method{'s' if sizes[0] != 1 else ''}" if len(sizes) == 1
              else f"{sizes[0]}–{sizes[-1]} methods")
    chosen_on = best[0]["chosen_on"] if best else "validation accuracy"
    seeds = min(int(b["seeds"]) for b in best) if best else 0
    return (f"Chosen on {chosen_on}, judged on test: at each kept fraction the method with the best "
            f"{chosen_on.split(' (')[0]} is named, and its test margin over random is reported. Verdicts are "
            f"Holm-corrected (family-wise error {alpha:.0%}) over the {family} compared with random at each kept "
            f"fraction (two-sided Welch tests over {seeds} or more training seeds, each on its own random subset); "
            "each interval is at its Holm step's level (the first step's is Bonferroni's), so it excludes zero "
            "exactly when the verdict is not \"no clear difference\".")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(r)} |" for r in rows)]
