"""Slurm/local wall-time ratio of a small run: the same config locally (`--cores N`) and through a Slurm profile on a
throwaway single-node cluster (tests/slurm_cluster.py; needs root and Debian's slurm-wlm + munge).

    python benchmarks/slurm.py                                   # the tests' tiny config, the repository's profile
    python benchmarks/slurm.py --shards 4                        # with a 4-shard features set (test_slurm's run)
    python benchmarks/slurm.py --repo /tmp/old --profile /tmp/old_profile   # another checkout / profile
    python benchmarks/slurm.py --before /tmp/old /tmp/old_profile  # also that checkout + profile on the same cluster

Prints the local and the Slurm wall, their ratio, the number of Slurm jobs, and ends with one JSON line. With
--before, the local run is shared: cluster settings (profile, resources, groups, localrules) do not change a local
run's jobs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY  # noqa: E402  (the tests' tiny config: one source of truth)
from slurm_cluster import SlurmCluster  # noqa: E402


def small_config(shards: int) -> dict[str, Any]:
    """TINY, plus (shards > 0) a features set over the training split of proxy seed 0, epoch 1, in `shards` jobs."""
    cfg = copy.deepcopy(TINY)
    cfg["compute"] = {"device": "cpu"}  # the test cluster has no GPU (README: the switch for such a cluster)
    if shards:
        cfg["features"] = {"shards": shards, "sets": {"grads": {"epochs": [1], "splits": ["train"], "dim": 64}}}
        cfg["stages"] = ["selection", "features"]
    return cfg


def run(repo: Path, workdir: Path, args: list[str], env: dict[str, str], timeout: int) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           f"--configfile={workdir / 'config.yaml'}", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=repo)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        slurm_logs = "".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                             for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")))
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}\n"
                         f"{slurm_logs}")
    return wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose Snakefile and datasel package run")
    ap.add_argument("--profile", type=Path, default=None, help="Slurm profile folder (default: <repo>/profiles/slurm)")
    ap.add_argument("--before", nargs=2, type=Path, metavar=("REPO", "PROFILE"),
                    help="also run this checkout with this profile through the same cluster (first)")
    ap.add_argument("--shards", type=int, default=0, help="add a features set computed in this many shard jobs")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--local-s", type=float, default=None,
                    help="the local wall of an earlier measurement of the same config (skips the local run)")
    ap.add_argument("--timeout", type=int, default=3600)
    ns = ap.parse_args(argv)
    repo = ns.repo.resolve()
    setups = [("after", repo, (ns.profile or repo / "profiles" / "slurm").resolve())]
    if ns.before:
        setups.insert(0, ("before", ns.before[0].resolve(), ns.before[1].resolve()))
    extra = {"DATASEL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {"shards": ns.shards, "load_avg_1m_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="datasel-slurm-bench-") as tmp:
        tmp_path = Path(tmp)
        cfg = yaml.safe_dump(small_config(ns.shards))
        for name in ("local", *(s[0] for s in setups)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.yaml").write_text(cfg)
        local = ns.local_s or run(repo, tmp_path / "local", ["--cores", str(ns.cores)],
                                  {**os.environ, **extra, "PYTHONPATH": str(repo)}, ns.timeout)
        out["local_s"] = round(local, 1)
        print(f"local --cores {ns.cores} ({repo}): {local:.1f} s", flush=True)
        cluster = SlurmCluster(tmp_path / "cluster", cpus=ns.cores).start()
        try:
            for name, r, profile in setups:
                seen = {j["JobId"] for j in cluster.jobs()}
                # the cluster's environment (SLURM_CONF, its srun on PATH) over ours
                wall = run(r, tmp_path / name, ["--profile", str(profile)],
                           {**cluster.env, **extra, "PYTHONPATH": str(r)}, ns.timeout)
                jobs = [j for j in cluster.jobs() if j["JobId"] not in seen]
                out[name] = {"repo": str(r), "profile": str(profile), "slurm_s": round(wall, 1),
                             "ratio": round(wall / local, 2), "slurm_jobs": len(jobs)}
                print(f"{name}: Slurm ({profile}): {wall:.1f} s in {len(jobs)} Slurm jobs; ratio to local "
                      f"{wall / local:.2f}", flush=True)
        finally:
            cluster.stop()
    out["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
