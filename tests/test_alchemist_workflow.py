"""End-to-end: the Alchemist stage through Snakemake on a tiny config (scores, Shift-Gsampling selection,
diagnostics table and plot, catalog)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "stages": ["alchemist"],
    "data": {"source": "mnist1d", "mnist1d": {"num_samples": 700, "seed": 3}, "noise": {"fraction": 0.2, "seed": 0}},
    "proxy": {"seeds": 1, "model": {"name": "mlp", "hidden": [32]}, "epochs": 2, "checkpoints": [0, 2]},
    "scoring": {
        "alchemist": {"method": "alchemist", "epoch": 2, "steps": 15, "warmup_steps": 5, "batch_size": 32},
    },
    "selection": {
        "fractions": [0.5],
        # stratify off: the paper's Shift-Gsampling drops the global top 10%, which the test checks
        "policies": {"alchemist_sg": {"policy": "shift_gsampling", "score": "alchemist", "mu": 0.5, "sigma": 0.2,
                                      "stratify": False}},
    },
    "training": {"model": {"name": "mlp", "hidden": [16]}, "seeds": [0], "budget": {"unit": "steps", "value": 5}},
    "alchemist": {"scores": ["alchemist"], "policy": "alchemist_sg", "bins": 10},
}


def _snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATASEL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores",
           "2", "--scheduler", "greedy", *extra, "--configfile", "config/experiments/tiny_alchemist.yaml"]
    # targets go before --configfile, which takes every following word as a config file
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_alchemist_stage_end_to_end(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "config" / "experiments" / "tiny_alchemist.yaml").write_text(yaml.safe_dump(TINY))
    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    res = tmp_path / "results"
    scores = pl.read_parquet(res / "scores" / "alchemist.parquet")
    examples = pl.read_parquet(res / "examples" / "examples.parquet")
    assert scores.height == examples.filter(pl.col("split") == "train").height
    assert scores.get_column("method").unique().to_list() == ["alchemist"]
    metrics = pl.read_parquet(res / "metrics" / "alchemist_rating.parquet")
    assert set(metrics.get_column("metric")) == {"auc_clean_high", "noisy_share"}
    assert metrics.filter(pl.col("metric") == "noisy_share").height == 10
    assert (res / "plots" / "alchemist_rating.png").stat().st_size > 1000
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    os.chdir(tmp_path)
    assert con.execute("select count(*) from scores where method = 'alchemist'").fetchone()[0] == scores.height
    con.close()

    # Shift-Gsampling through the generic select rule
    run = _snakemake(tmp_path, "results/selections/alchemist_sg_keep50.parquet")
    assert run.returncode == 0, run.stderr[-3000:]
    sel = pl.read_parquet(res / "selections" / "alchemist_sg_keep50.parquet")
    kept = sel.filter(pl.col("selected")).join(scores, on="example_id")
    assert kept.height == round(0.5 * scores.height)
    assert kept.get_column("rank").min() > 0.1 * scores.height  # the top 10% is dropped

    # a bad stage config is refused naming the field
    bad = {**TINY, "alchemist": {"scores": ["nope"]}}
    (tmp_path / "config" / "experiments" / "tiny_alchemist.yaml").write_text(yaml.safe_dump(bad))
    run = _snakemake(tmp_path, "-n")
    assert run.returncode != 0 and "alchemist.scores" in run.stdout + run.stderr
