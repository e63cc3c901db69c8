"""End to end: the DGA stage through Snakemake on a tiny MNIST-1D-domains config, tables in the catalog."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = """
stages: [dga]
compute: {threads: 1, progress: false}
dga:
  data: {source: mnist1d_domains, per_domain: 60, n_specific: 20, n_specific_test: 40}
  strategies: [dga, importance]
  seeds: [0]
  model: {name: mlp, hidden: [16]}
  train: {steps: 20, eval_every: 10}
  dga: {update_every: 5, align_batch: 16}
"""


def _snakemake(tmp: Path, configfile: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATASEL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp), "--cores", "2",
         "--scheduler", "greedy", "--configfile", configfile, *extra],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_dga_stage_end_to_end(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "config" / "experiments" / "dga_tiny.yaml").write_text(TINY)
    proc = _snakemake(tmp_path, "config/experiments/dga_tiny.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = tmp_path / "results"
    w = pl.read_parquet(res / "domain_weights" / "dga_dga_seed0.parquet")
    assert set(w["domain"]) == {"clean", "shift", "scale", "iid_noise", "corr_noise", "shear"}
    assert w.group_by("step").agg(pl.col("weight").sum())["weight"].to_list() == pytest.approx([1.0] * 5)
    scores = pl.read_parquet(res / "scores" / "dga_alignment.parquet")
    assert scores.height == 360 and scores["rank"].sort().to_list() == list(range(1, 361))
    assert (res / "plots" / "dga_weights.png").stat().st_size > 1000
    assert (res / "dga" / "models" / "dga_seed0.pt").exists()
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    os.chdir(tmp_path)
    n = con.execute("select count(*) from metrics where selection like 'dga_%'").fetchone()[0]
    assert n == 6  # loss, accuracy, min_loss for two runs
    # a bad config is refused before any job runs, naming the field
    (tmp_path / "config" / "experiments" / "bad.yaml").write_text(TINY.replace("align_batch: 16", "eta: 0"))
    bad = _snakemake(tmp_path, "config/experiments/bad.yaml", "-n")
    assert bad.returncode != 0 and "eta" in (bad.stderr + bad.stdout)
