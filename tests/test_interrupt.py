"""Interruption: a run SIGKILLed in the middle of proxy training, feature extraction, scoring and training, then
rerun, ends with exactly the tables of an uninterrupted run, and never leaves a table that looks complete but is not.

One clean reference run builds every target below. A second folder is then driven stage by stage: each test starts
Snakemake on its stage's targets in a new process group, kills the whole group (Snakemake and its jobs) with SIGKILL
once the stage's partial output appears, checks what the kill left behind, reruns, and compares with the reference.
The stages' configs are made slow enough (small batches, many epochs, small feature chunks) that the kill lands
while the stage is still writing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import TINY, snakemake, snakemake_cmd, write_config

from datasel.errors import DataselError
from datasel.store import read_table

CFG = copy.deepcopy(TINY)
CFG["stages"] = ["selection", "features"]
# 60 epochs of batch 8 (~3000 steps per proxy run) keep the proxy busy between its epoch-1 and epoch-60 checkpoints
CFG["proxy"].update({"epochs": 60, "checkpoints": [0, 1, 60], "batch_size": 8})
CFG["selection"]["policies"] = {"el2n_offset": {"policy": "offset", "score": "el2n", "offset": 0.1}}
CFG["training"].update({"seeds": [0], "budget": {"unit": "steps", "value": 4000}, "batch_size": 16})
# chunks of 2 rows: a shard commits ~100 chunks (each fdatasync'ed), so a kill lands between two of them
CFG["features"] = {"shards": 2, "sets": {"grads": {"seeds": [0], "epochs": [1], "splits": ["train"], "dim": 64,
                                                   "chunk_size": 2, "mode": "loop"}}}

PROXY = [f"results/proxy/seed{s}/epoch{e}.pt" for s in (0, 1) for e in (0, 1, 60)]
FEATURES = ["results/features/grads/seed0-epoch1-train/index.json"]
SCORES = ["results/scores/el2n.parquet", "results/scores/grand.parquet"]
TRAIN = ["results/metrics/train/el2n_offset_keep50/seed0.parquet"]
ALL = PROXY + FEATURES + SCORES + TRAIN


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("clean")
    write_config(work, CFG)
    snakemake(work, *ALL)
    return work


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    """The folder the stage tests interrupt in turn (proxy, features, scoring, training: file order)."""
    work = tmp_path_factory.mktemp("killed")
    write_config(work, CFG)
    return work


def run_and_kill(work: Path, targets: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start Snakemake on ``targets``; SIGKILL its whole process group as soon as ``ready()`` holds."""
    cmd = snakemake_cmd(work, *targets)
    with open(work / "killed_run.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "DATASEL_PROGRESS": "0"})
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"snakemake ended ({proc.returncode}) before the stage could be interrupted:\n"
                                + (work / "killed_run.out").read_text()[-3000:])
                if time.monotonic() > deadline:
                    pytest.fail("the stage never started")
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def incomplete_markers(work: Path) -> set[str]:
    """Outputs Snakemake has marked incomplete (a job started writing them and never finished)."""
    folder = work / ".snakemake" / "incomplete"
    return {base64.b64decode(p.name).decode() for p in folder.iterdir()} if folder.exists() else set()


def assert_nothing_looks_complete_but_is_not(work: Path, stage_outputs: list[str]) -> list[str]:
    """Every table on disk reads and passes its schema, every checkpoint loads; every output of the killed stage
    that is on disk is either whole or marked incomplete by Snakemake, and a dry run schedules the stage again.
    Returns the stage outputs the dry run will redo."""
    res = work / "results"
    for f in res.rglob("*.parquet"):
        if f.name.startswith(".tmp-") or ".work" in f.parts:
            continue  # temporaries nobody reads: atomic_path renames only finished files
        folder = f.relative_to(res).parts[0]
        read_table(f, folder if folder in ("examples", "scores", "selections", "metrics") else None)
    for f in res.rglob("*.pt"):
        torch.load(f, map_location="cpu", weights_only=False)  # a checkpoint on disk is always whole
    marked = incomplete_markers(work)
    dry = snakemake(work, "-n", *stage_outputs).stdout
    redo = [o for o in stage_outputs if o in dry]
    assert redo, f"the dry run after the kill schedules none of {stage_outputs}:\n{dry[-2000:]}"
    for o in stage_outputs:
        if (work / o).exists() and o not in marked:
            assert o not in redo, f"{o} is on disk, not marked incomplete, yet rescheduled"
    return redo


def _rerun(work: Path, targets: list[str]) -> str:
    """Resume after the kill, with --cores 1 (the clean run used 2: the result may not depend on it).

    The killed Snakemake could not release its lock, so the plain rerun is refused with Snakemake's message that
    names --unlock; after unlocking, the rerun redoes the incomplete jobs (the default profile sets
    rerun-incomplete)."""
    proc = snakemake(work, "--cores", "1", *targets, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Directory cannot be locked" in text and "--unlock" in text, text[-3000:]
    snakemake(work, "--unlock")
    proc = snakemake(work, "--cores", "1", *targets)
    return proc.stdout + proc.stderr


def _same_checkpoint(a: Path, b: Path) -> None:
    sa = torch.load(a, map_location="cpu", weights_only=False)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=False)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{a}: {k} differs from the clean run"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_during_proxy_training(reference, victim):
    first, last = victim / "results/proxy/seed0/epoch1.pt", victim / "results/proxy/seed0/epoch60.pt"
    run_and_kill(victim, PROXY, lambda: first.exists())
    assert not last.exists(), "proxy finished before the kill; raise CFG proxy epochs"
    redo = assert_nothing_looks_complete_but_is_not(victim, PROXY)
    # the killed job's early checkpoints are each whole files, but the job is not done: Snakemake marked them
    # incomplete, so nothing downstream may take them and the rerun redoes the whole job
    early = ["results/proxy/seed0/epoch0.pt", "results/proxy/seed0/epoch1.pt"]
    assert all((victim / p).exists() for p in early)
    assert set(early) <= incomplete_markers(victim) and set(early) <= set(redo)
    _rerun(victim, PROXY)
    for p in PROXY:
        _same_checkpoint(reference / p, victim / p)


def test_kill_during_feature_extraction(reference, victim):
    work_root = victim / "results/features/.work"

    def partial_shard() -> bool:
        done = list(work_root.rglob("done.u8")) if work_root.exists() else []
        return any(0 < sum(d.read_bytes()) < d.stat().st_size for d in done)

    run_and_kill(victim, FEATURES, partial_shard)
    index = victim / FEATURES[0]
    assert not index.exists()
    # a shard folder in the output tree is either absent or complete: half-done rows live only under .work
    from datasel.features.store import FeatureShard

    for shard in (victim / "results/features/grads/seed0-epoch1-train").glob("shard_*"):
        FeatureShard.open(shard, verify=True)
    with pytest.raises(DataselError, match="incomplete"):
        FeatureShard.open(next(d.parent for d in work_root.rglob("done.u8")
                               if sum(d.read_bytes()) < d.stat().st_size))
    assert_nothing_looks_complete_but_is_not(victim, FEATURES)
    _rerun(victim, FEATURES)
    shards = sorted((reference / "results/features/grads/seed0-epoch1-train").glob("shard_*"))
    assert len(shards) == 2
    for shard in shards:
        twin = victim / shard.relative_to(reference)
        assert _sha(twin / "features.f16") == _sha(shard / "features.f16")
        assert pl.read_parquet(twin / "ids.parquet").equals(pl.read_parquet(shard / "ids.parquet"))
    assert not list((victim / "results/features").rglob(".tmp-*"))


def test_kill_during_scoring(reference, victim):
    logs = [victim / "logs/results/scores/el2n.log", victim / "logs/results/scores/grand.log"]
    run_and_kill(victim, SCORES, lambda: any(p.exists() for p in logs))
    assert_nothing_looks_complete_but_is_not(victim, SCORES)
    _rerun(victim, SCORES)
    for s in SCORES:
        assert _sha(victim / s) == _sha(reference / s), s


def test_kill_during_training(reference, victim):
    log = victim / "logs/results/train/el2n_offset_keep50.log"  # one job per selection over its seeds
    run_and_kill(victim, TRAIN, lambda: log.exists())
    assert not (victim / TRAIN[0]).exists(), "training finished before the kill; raise CFG training budget"
    assert_nothing_looks_complete_but_is_not(victim, TRAIN)
    _rerun(victim, TRAIN)
    for t in [*TRAIN, "results/selections/el2n_offset_keep50.parquet", "results/examples/examples.parquet"]:
        assert _sha(victim / t) == _sha(reference / t), t
    assert not list((victim / "results").rglob(".tmp-*"))
