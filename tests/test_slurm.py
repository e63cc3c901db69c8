"""`--profile slurm` on a real (single-node, throwaway) Slurm: every non-local rule runs as a Slurm job, feature shards
as separate jobs, and the tables equal a local run's.

The cluster (tests/slurm_cluster.py) has no accounting, so a profile that asks `sacct` for job states would wait
forever here; it has one partition that the profile does not name, and no GPU, so the run switches GPUs off with
compute.device: cpu, the one switch the README gives for such a cluster. Skips, saying why, where Slurm cannot be
installed or started (not root, no slurm-wlm/munge: `.ci/run` installs them through apt).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, TINY, snakemake, write_config
from slurm_cluster import SlurmCluster, SlurmUnavailable, missing_requirements

pytestmark = pytest.mark.slow

SHARDS = 4
LOCAL_RULES = {"report", "catalog", "features_gather"}
STARTED = re.compile(r"step (\w+)[^\n]*: started \([^)]*\)(?: in Slurm job (\d+))?")


def tiny_with_features() -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["stages"] = ["selection", "features"]
    cfg["compute"] = {"device": "cpu"}  # the cluster has no GPU
    cfg["features"] = {"shards": SHARDS, "sets": {"grads": {"epochs": [1], "splits": ["train"], "dim": 64}}}
    return cfg


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    why = missing_requirements()
    if why:
        pytest.skip(f"no Slurm here: {why}")
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2).start()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm could not be started: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The same config run locally and through `--profile slurm` (as README's Slurm section has it)."""
    base = tmp_path_factory.mktemp("slurm_runs")
    cfg = tiny_with_features()
    local, remote = base / "local", base / "on_slurm"  # not "slurm": --profile slurm would take that folder
    write_config(local, cfg)
    write_config(remote, cfg)
    snakemake(local)
    env = {**slurm_cluster.env, "DATASEL_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    # `datasel run DIR --profile slurm`: the repository's profile, found by name
    proc = subprocess.run([sys.executable, "-m", "datasel.cli", "run", str(remote), "--profile", "slurm"],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=base)
    if proc.returncode != 0:
        raise AssertionError(f"slurm run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n"
                             f"slurmctld.log:\n{slurm_cluster.log('slurmctld')[-3000:]}\n{slurm_logs(remote)}")
    return local, remote, slurm_cluster.jobs()


def slurm_logs(run: Path) -> str:
    """The Slurm job logs the executor keeps for failed jobs (what a failure message should show)."""
    return "".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}\n"
                   for p in sorted((run / ".snakemake" / "slurm_logs").rglob("*.log")))


def steps(run: Path) -> list[tuple[str, str | None, Path]]:
    """(rule, Slurm job id or None, log) for every step that wrote a rule log."""
    out = []
    for log in sorted((run / "logs").rglob("*.log")):
        m = STARTED.search(log.read_text(errors="replace"))
        if m:
            out.append((m.group(1), m.group(2), log))
    return out


def test_cluster_has_no_accounting(slurm_cluster):
    """The case the profile's status command must survive: sacct fails on every query."""
    proc = subprocess.run(["sacct", "-X", "--noheader"], capture_output=True, text=True, env=slurm_cluster.env)
    assert proc.returncode != 0 and "accounting storage is disabled" in proc.stderr.lower(), proc


def test_every_non_local_rule_ran_as_a_slurm_job(runs):
    _, remote, jobs = runs
    by_id = {j["JobId"]: j for j in jobs}
    ran = steps(remote)
    assert {r for r, _, _ in ran} >= {"prepare", "proxy", "score", "select", "train", "features_shard", *LOCAL_RULES}
    for rule, job, log in ran:
        if rule in LOCAL_RULES:
            assert job is None, f"{rule} ran in Slurm job {job} ({log}); it is a localrule"
            continue
        assert job is not None, f"{rule} did not run in a Slurm job ({log})"
        assert by_id[job]["JobState"] == "COMPLETED", by_id[job]
        # one CPU per job: compute.threads (1), not a profile's guess; the cluster's default partition
        assert by_id[job]["ProcCnt"] == "1" and by_id[job]["Partition"] == "main", by_id[job]
    # every Slurm job of the run did one of these steps, and nothing else was submitted
    assert {j for _, j, _ in ran if j} == set(by_id), (sorted(by_id), ran)


def test_select_and_train_share_one_job_per_selection(runs):
    _, remote, jobs = runs
    ran = steps(remote)
    select_jobs = {log.stem: job for rule, job, log in ran if rule == "select"}
    train_jobs = {log.stem: job for rule, job, log in ran if rule == "train"}
    assert set(select_jobs) == set(train_jobs) == {"random_keep50", "el2n_offset_keep50", "full_keep100"}
    assert select_jobs == train_jobs
    assert len(set(train_jobs.values())) == 3
    # prepare 1 + proxies 2 + scores 2 + select/train 3 + feature shards 4
    assert len(jobs) == 12, jobs


def test_feature_shards_are_separate_jobs_and_equal_local(runs):
    from datasel.features.store import FeatureSet

    local, remote, _ = runs
    shard_jobs = {log.stem: job for rule, job, log in steps(remote) if rule == "features_shard"}
    assert sorted(shard_jobs) == [f"shard_{i}" for i in range(SHARDS)]
    assert len(set(shard_jobs.values())) == SHARDS
    gathers = [log for rule, _, log in steps(remote) if rule == "features_gather"]
    assert len(gathers) == 1
    rel = Path("results/features/grads/seed0-epoch1-train/index.json")
    a, b = FeatureSet.open(local / rel, verify=True), FeatureSet.open(remote / rel, verify=True)
    assert a.ids() == b.ids() and a.rows > 0
    assert (a.load() == b.load()).all()
    sha = lambda p: [s["sha256"] for s in json.loads(p.read_text())["shards"]]  # noqa: E731
    assert sha(local / rel) == sha(remote / rel)


@pytest.mark.parametrize("kind", ["selections", "scores", "metrics/train"])
def test_tables_equal_a_local_run(runs, kind):
    local, remote, _ = runs
    files = sorted(p.relative_to(local) for p in (local / "results" / kind).rglob("*.parquet"))
    assert files and files == sorted(p.relative_to(remote) for p in (remote / "results" / kind).rglob("*.parquet"))
    for rel in files:
        a, b = pl.read_parquet(local / rel), pl.read_parquet(remote / rel)
        assert a.equals(b), f"{rel} differs between the local and the Slurm run"
