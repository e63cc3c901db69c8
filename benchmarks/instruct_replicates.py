"""The instruct experiment (LESS against RDS, random, the full pool and the target rows alone on SmolLM2) repeated
over data seeds: each seed generates its own pool, target and test files, hence its own warm-up draw, LESS and RDS
rankings and random subsets. The report of one run judges a selection against random over fine-tuning seeds only;
this says how much of its verdict survives another draw of the data.

Per seed: ``config/experiments/instruct.yaml`` with ``data.instruct.generate.seed`` set, run with ``datasel run``
in its own folder (``--parallel`` runs at once, each with ``--cores``). Printed: per seed and selection the test
exact match (mean over fine-tuning seeds), the share of rows from the target task, the selection the report chose
on validation and its verdict; then, per selection, the mean over data seeds and on how many seeds LESS's test
exact match beats each other selection's. The last line is one JSON object.

    DATASEL_PROGRESS=0 python benchmarks/instruct_replicates.py --seeds 0 1 2 --out /tmp/instruct_reps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "config" / "experiments" / "instruct.yaml"


def run_seed(seed: int, out: Path, cores: int) -> dict[str, Any]:
    """One data seed's experiment in ``out/seed<seed>``; its summary table and wall time."""
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(TEMPLATE.read_text())
    cfg["data"]["instruct"]["generate"]["seed"] = seed
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    with open(folder / "run.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "datasel.cli", "run", str(folder), "--cores", str(cores)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DATASEL_PROGRESS": "0"})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"seed {seed}: datasel run failed (exit {proc.returncode}); see {folder / 'run.log'}")
    summary = pl.read_csv(folder / "results" / "report" / "summary.csv")
    return {"seed": seed, "seconds": round(seconds, 1), "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, required=True, help="a folder for the runs (one sub-folder per seed)")
    ap.add_argument("--cores", type=int, default=2, help="cores of each run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once")
    args = ap.parse_args()
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda s: run_seed(s, args.out, args.cores), args.seeds))
    rows = []
    for run in runs:
        s = run["summary"]
        chosen = s.filter(pl.col("chosen_on_validation").fill_null(False))
        pick = chosen.item(0, "selection") if chosen.height else None
        verdict = chosen.item(0, "verdict") if chosen.height else None
        print(f"data seed {run['seed']} ({run['seconds']:.0f} s): chosen on validation {pick} ({verdict})")
        for r in s.sort("accuracy_mean", descending=True).iter_rows(named=True):
            share = "" if r["target_share"] is None else f", {r['target_share']:.1%} from the target task"
            print(f"  {r['selection']:<16} test exact match {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}{share}")
            rows.append({"seed": run["seed"], "selection": r["selection"], "test_em": r["accuracy_mean"],
                         "target_share": r["target_share"], "chosen": r["selection"] == pick, "verdict": verdict})
    table = pl.DataFrame(rows)
    means = (table.group_by("selection").agg(pl.col("test_em").mean().alias("mean"), pl.col("test_em").std()
                                             .alias("std_over_seeds"), pl.col("target_share").mean().alias("share"),
                                             pl.col("chosen").sum().alias("chosen"))
             .sort("mean", descending=True))
    print(f"over {len(runs)} data seeds (test exact match: mean, std over seeds; share from the target task; "
          "times chosen on validation):")
    for r in means.iter_rows(named=True):
        print(f"  {r['selection']:<16} {r['mean']:.3f} ± {r['std_over_seeds'] or 0:.3f}  share "
              f"{(r['share'] or 0):.1%}  chosen {r['chosen']}")
    wide = table.pivot(on="selection", index="seed", values="test_em")
    less = "less_top_keep5"
    wins = {c: int((wide.get_column(less) > wide.get_column(c)).sum()) for c in wide.columns
            if c not in ("seed", less)}
    print(f"seeds on which {less} beats each selection on test: " + ", ".join(f"{c} {n}/{len(runs)}"
                                                                             for c, n in wins.items()))
    print(json.dumps({"benchmark": "instruct_replicates", "seeds": args.seeds,
                      "seconds": {str(r["seed"]): r["seconds"] for r in runs},
                      "test_em": {r["selection"]: round(r["mean"], 4) for r in means.iter_rows(named=True)},
                      "per_seed": {str(k): {r["selection"]: round(r["test_em"], 4) for r in g.iter_rows(named=True)}
                                   for (k,), g in table.group_by(["seed"], maintain_order=True)},
                      "chosen": {r["selection"]: int(r["chosen"]) for r in means.iter_rows(named=True)},
                      "less_wins": wins}))


if __name__ == "__main__":
    main()
