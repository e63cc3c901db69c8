"""The converged grids (config/experiments/quality_converged.yaml, text_converged.yaml) against the papers' claims.

    python benchmarks/converged.py --run converged/results/quality/noise0
    python benchmarks/converged.py --run textconv/results

``--run`` is a run folder holding ``metrics/train/*/seed*.parquet`` (and, if recorded, ``curves/``). Prints every
method × kept fraction (test accuracy, Holm-corrected margin over random as the report computes it, difference to
full data with its Welch 95% interval), the random half against full data, the last curve interval of full data
where curves exist, and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from datasel.report.curves import last_rise
from datasel.report.verdicts import margins, welch_ci
from datasel.store import read_table


def load(run: Path, name: str, folder: str) -> pl.DataFrame | None:
    files = sorted((run / folder).glob("*/seed*.parquet"))
    return pl.concat([read_table(p, name) for p in files], how="diagonal_relaxed") if files else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    args = ap.parse_args()
    metrics = load(args.run, "metrics", "metrics/train")
    curves = load(args.run, "curves", "curves")
    test = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy"))
    full = test.filter(pl.col("method") == "full").get_column("value").to_numpy()
    marg = margins(test.filter(pl.col("method") != "full").select("fraction", "method", "value"))
    out: dict = {"full": float(full.mean()), "cells": []}
    print(f"full data: {100 * full.mean():.2f} ± {100 * full.std(ddof=1):.2f} (n={len(full)})")
    print("| kept | method | test acc | margin over random [Holm CI] | verdict | vs full [95% CI] |")
    print("|---|---|---|---|---|---|")
    for fraction in sorted(test.filter(pl.col("method") != "full").get_column("fraction").unique().to_list()):
        part = test.filter(pl.col("fraction") == fraction)
        for method in sorted(part.get_column("method").unique().to_list()):
            v = part.filter(pl.col("method") == method).get_column("value").to_numpy()
            d, lo, hi = welch_ci(v, full)
            m = marg.filter((pl.col("fraction") == fraction) & (pl.col("method") == method))
            mtxt, verdict = "—", "—"
            cell = {"fraction": fraction, "method": method, "mean": float(v.mean()), "std": float(v.std(ddof=1)),
                    "vs_full": d, "vs_full_ci": [lo, hi]}
            if m.height:
                r = m.row(0, named=True)
                mtxt = f"{100 * r['margin']:+.2f} [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
                verdict = r["verdict"]
                cell.update(margin=r["margin"], ci=[r["ci_low"], r["ci_high"]], verdict=verdict)
            print(f"| {fraction:.0%} | {method} | {100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f} | {mtxt} | "
                  f"{verdict} | {100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] |")
            out["cells"].append(cell)
    half = test.filter((pl.col("method") == "random") & (pl.col("fraction") == 0.5)).get_column("value").to_numpy()
    if len(half):
        d, lo, hi = welch_ci(half, full)
        print(f"random half against full data: {100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] points")
        out["random_half_vs_full"] = [d, lo, hi]
    if curves is not None and curves.height:
        for method, fraction in curves.select("method", "fraction").unique().sort("method", "fraction").iter_rows():
            r = last_rise(curves, method, fraction)
            if r is not None:
                print(f"curve {method} {fraction:.0%}: last interval {100 * r['previous']:.2f} -> "
                      f"{100 * r['last']:.2f} ({100 * r['rise']:+.2f} points over {r['steps']:.0f} steps, "
                      f"{r['rose_share']:.0%} of seeds rose)")
                out.setdefault("curves", []).append({"method": method, "fraction": fraction, **r})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
