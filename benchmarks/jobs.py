"""Where a Snakemake job's time goes on a small run: interpreter start, imports, the Snakefile parse, the work.

    DATASEL_PROGRESS=0 python benchmarks/jobs.py                   # the tests' tiny config (600 MNIST-1D rows)
    DATASEL_PROGRESS=0 python benchmarks/jobs.py --run tabular     # a user's run: sklearn's breast cancer (569 rows)
                                                                   # as their CSV, config from `datasel init --data`
    DATASEL_PROGRESS=0 python benchmarks/jobs.py --run tabular_default   # that CSV through the default experiment's
                                                                   # stages and budget (its 1-D CNN, 1,500 steps)
    DATASEL_PROGRESS=0 python benchmarks/jobs.py --run tabular --cores 2 --keep /tmp/bc   # keep the run folder
    DATASEL_PROGRESS=0 python benchmarks/jobs.py --repo /tmp/old  # another checkout's Snakefile and code (before/after)
    DATASEL_PROGRESS=0 python benchmarks/jobs.py --run default     # the default experiment itself (config/config.yaml;
                                                                   # ~25 CPU-minutes: a 10-minute target)

Measured, each in fresh processes:
  1. interpreter start (`python -c pass`), the Snakemake script preamble (`from snakemake import script`), and the
     import of each step's module (what a job pays before its step starts), best of 3;
  2. the Snakefile parse and DAG (`snakemake -n` on the run's config, wall);
  3. the run itself: wall, CPU seconds (user + sys of every process it started), number of jobs, and per rule the
     sum of "process start and imports" and of "work", wall and CPU, that each step writes into its rule log
     (datasel.snakemake_entry.run_step), so the share of a run spent starting jobs is a measured figure: of the
     summed job wall (the "job startup share") and of the run's CPU (less affected by other
     load on a shared machine); what remains of the CPU is Snakemake's own process (parse, DAG, scheduling);
  4. for the tiny and tabular runs, an estimate of the default experiment's job-start wall on ``--cores`` from
     these per-job figures (``--run default`` measures it instead).

Prints readable figures and ends with one JSON line; its ``goals`` holds the target figures (569-row tabular run
under 180 s, default experiment under 600 s on 2 cores, job start under 20% of its summed job wall) with pass/fail.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY, write_config  # noqa: E402  (the tests' tiny config and run folder: one source of truth)

# what each step script imports before run_step starts (workflow/scripts/*.py)
STEP_MODULES = {
    "prepare/score/select/train": "datasel.pipeline",
    "proxy": "datasel.training.proxy",
    "report": "datasel.report.build",
    "catalog (entry only)": "datasel.snakemake_entry",
}
STARTED = re.compile(r"step (\w+)[^\n]*: started \(process start and imports ([\d.]+)s(?:, CPU ([\d.]+)s)?\)")
DONE = re.compile(r"step (\w+): done, work ([\d.]+)s(?:, CPU ([\d.]+)s)?")


REPO = ROOT  # the checkout whose Snakefile and datasel package run (--repo)


def best_of(cmd: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        times.append(time.perf_counter() - t0)
    return min(times)


def import_costs() -> dict[str, float]:
    py = sys.executable
    base = best_of([py, "-c", "pass"])
    out = {"python_start_s": base,
           "snakemake_preamble_s": best_of([py, "-c", "from snakemake import script"]) - base}
    for label, mod in STEP_MODULES.items():
        out[f"import {mod} ({label})_s"] = best_of([py, "-c", f"import {mod}"]) - base
    out["import torch_s"] = best_of([py, "-c", "import torch"]) - base
    return out


def user_csv(work: Path) -> tuple[Path, list[str]]:
    """sklearn's breast cancer (569 rows, label column `target`) written as a user's CSV; its feature columns."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    csv = work / "breast_cancer.csv"
    frame.to_csv(csv, index=False)
    return csv, [c for c in frame.columns if c != "target"]


def tabular_user_config(work: Path) -> dict[str, Any]:
    """What a user runs on their own table: the config `datasel init DIR --data FILE --label target` writes."""
    from datasel.runfolder import init_folder

    csv, _ = user_csv(work)
    with tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(init_folder(Path(tmp) / "run", "tabular", data=str(csv), label="target").read_text())


def tabular_config(work: Path) -> dict[str, Any]:
    """The default experiment with a user's tabular CSV as data (its CNN and budget on 569 rows)."""
    csv, features = user_csv(work)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"] = {"source": "files", "path": str(csv), "label_column": "target",
                   "feature_columns": features,
                   "splits": cfg["data"]["splits"], "noise": {"fraction": 0.0, "seed": 0}}
    return cfg


def snakemake(work: Path, cores: int, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run Snakemake; return the process, its wall seconds and the CPU seconds of everything it started."""
    # the folder's own config.yaml, as `datasel run` passes it (the Snakefile's default is the repository's config)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           f"--configfile={work / 'config.yaml'}", "--cores", str(cores), "--scheduler", "greedy", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "DATASEL_PROGRESS": "0"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def per_rule(work: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, summed process start + imports and summed work (wall and CPU), from the steps' log lines.

    (CPU is absent, 0, in logs written by a checkout older than the CPU figures: --repo on an old commit.)"""
    rules: dict[str, dict[str, float]] = defaultdict(
        lambda: {"jobs": 0, "startup_s": 0.0, "work_s": 0.0, "startup_cpu_s": 0.0, "work_cpu_s": 0.0})
    for log in (work / "logs").rglob("*.log"):
        text = log.read_text(errors="replace")
        for rule, secs, cpu in STARTED.findall(text):
            rules[rule]["jobs"] += 1
            rules[rule]["startup_s"] += float(secs)
            rules[rule]["startup_cpu_s"] += float(cpu or 0)
        for rule, secs, cpu in DONE.findall(text):
            rules[rule]["work_s"] += float(secs)
            rules[rule]["work_cpu_s"] += float(cpu or 0)
    return {name: {k: round(v, 2) for k, v in r.items()} for name, r in rules.items()}


def default_job_counts() -> dict[str, int]:
    """Jobs of the default experiment per rule, from its config (one train job per selection over its seeds)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    selections = len(cfg["selection"]["policies"]) * len(cfg["selection"]["fractions"]) + 1
    return {"prepare": 1, "proxy": cfg["proxy"]["seeds"], "score": len(cfg["scoring"]), "select": selections,
            "train": selections, "report": 1, "catalog": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", choices=["tiny", "tabular", "tabular_default", "default"], default="tiny")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--no-import-costs", action="store_true", help="skip part 1 (minutes on a loaded machine)")
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout to run (e.g. an older commit, for before/after)")
    args = ap.parse_args()
    global REPO
    REPO = args.repo.resolve()

    print("fresh-process costs (best of 3, seconds):")
    costs = {} if args.no_import_costs else import_costs()
    for k, v in costs.items():
        print(f"  {k[:-2]:<60} {v:6.2f}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="datasel-jobs-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = {"tiny": lambda: copy.deepcopy(TINY), "tabular": lambda: tabular_user_config(work),
           "tabular_default": lambda: tabular_config(work),
           "default": lambda: yaml.safe_load((ROOT / "config" / "config.yaml").read_text())}[args.run]()
    write_config(work, cfg)

    _, parse_wall, _ = snakemake(work, args.cores, "-n")
    print(f"Snakefile parse + DAG (snakemake -n): {parse_wall:.2f}s")
    proc, wall, cpu = snakemake(work, args.cores)
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", proc.stdout + proc.stderr)
    jobs = int(done[-1][1]) if done else -1
    rules = per_rule(work)
    startup = sum(r["startup_s"] for r in rules.values())
    work_s = sum(r["work_s"] for r in rules.values())
    startup_cpu = sum(r["startup_cpu_s"] for r in rules.values())
    work_cpu = sum(r["work_cpu_s"] for r in rules.values())
    step_jobs = sum(int(r["jobs"]) for r in rules.values())
    print(f"\nrun '{args.run}' on {args.cores} cores: wall {wall:.1f}s, CPU {cpu:.1f}s, {jobs} jobs "
          f"({step_jobs} with a step), load average {os.getloadavg()[0]:.1f}")
    print(f"  {'rule':<10} {'jobs':>4} {'start s':>8} {'work s':>8} {'start CPU':>10} {'work CPU':>9} "
          f"{'start/job':>10}")
    for name, r in sorted(rules.items()):
        print(f"  {name:<10} {int(r['jobs']):>4} {r['startup_s']:>8.1f} {r['work_s']:>8.1f} "
              f"{r['startup_cpu_s']:>10.1f} {r['work_cpu_s']:>9.1f} {r['startup_s'] / max(1, r['jobs']):>10.2f}")
    share = startup / max(1e-9, startup + work_s)
    cpu_share = startup_cpu / max(1e-9, cpu)
    print(f"  job start + imports: {startup:.1f}s of {startup + work_s:.1f}s summed job wall ({share:.0%}); "
          f"{startup_cpu:.1f} of {cpu:.1f} CPU seconds ({cpu_share:.0%}); Snakemake's own process and the rest "
          f"{cpu - startup_cpu - work_cpu:.1f} CPU s")

    result = {"run": args.run, "repo": str(REPO), "load_avg_1m": round(os.getloadavg()[0], 2), "cores": args.cores,
              "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "jobs": jobs, "parse_dag_s": round(parse_wall, 2),
              "startup_sum_s": round(startup, 2), "work_sum_s": round(work_s, 2), "startup_share": round(share, 3),
              "startup_cpu_s": round(startup_cpu, 2), "work_cpu_s": round(work_cpu, 2),
              "startup_cpu_share": round(cpu_share, 3), "per_rule": rules,
              **{k: round(v, 3) for k, v in costs.items()}}
    # the start-cost goal is stated for the default run; a run of seconds of work is start cost by nature
    goals: dict[str, bool] = {}
    if args.run == "tabular":
        goals["tabular_569_rows_under_180s"] = wall < 180
    if args.run == "default":
        goals[f"default_under_600s_on_{args.cores}_cores"] = wall < 600
        goals["job_start_share_under_0.2"] = share < 0.2
    result["goals"] = goals
    if args.run != "default":
        # the default experiment: same rules; start cost per job as measured here, its work not run here
        counts = default_job_counts()
        per_job_start = startup / max(1, step_jobs)
        est_start = sum(counts.values()) * per_job_start / args.cores
        print(f"\ndefault experiment: {sum(counts.values())} jobs {counts}; at {per_job_start:.2f}s start per job "
              f"that is ~{est_start:.0f}s of wall on {args.cores} cores for job starts alone (its work is not run "
              f"here: --run default)")
        result.update(default_jobs=sum(counts.values()), default_start_wall_estimate_s=round(est_start, 1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
