"""End to end: DGA on a causal LM with LoRA over token-chunked text domains (``data.source: installed_text``, the
path config/experiments/dga_text.yaml takes) through Snakemake, on a tiny random llama and a small fake installed
tree; run twice from scratch, the domain-weight trajectories are the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from installed_tree import installed_tree
from lm_models import save_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["dga", "uniform", "importance"]


def _config(roots: dict[str, str], llama: Path) -> dict:
    return {
        "stages": ["dga"],
        "compute": {"threads": 1, "progress": False},
        "dga": {
            "data": {"source": "installed_text", "domains": ["code", "licenses", "reference"], "specific": "manpages",
                     "exclude": ["man1/gen_*"], "roots": roots, "chunk_tokens": 12, "per_domain": 6,
                     "n_specific": 4, "n_specific_test": 6, "per_file": 2, "seed": 0},
            "strategies": STRATEGIES,
            "seeds": [0],
            "model": {"name": "causal_lm", "path": str(llama), "lora": {"r": 2, "alpha": 4}},
            "train": {"steps": 6, "batch_size": 4, "lr": 0.01, "eval_every": 3, "eval_batch": 8},
            "dga": {"eta": 2.0, "update_every": 2, "align_batch": 4},
            "importance": {"k_nn": 1},
            "alignment": {"enabled": False},
        },
    }


def _run(folder: Path, cfg: dict) -> subprocess.CompletedProcess:
    shutil.copytree(ROOT / "config", folder / "config")
    (folder / "config" / "experiments" / "dga_text_test.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DATASEL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(folder), "--cores", "2",
         "--scheduler", "greedy", "--configfile", "config/experiments/dga_text_test.yaml"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_dga_on_a_causal_lm_with_text_domains_is_deterministic(tmp_path):
    llama = save_tiny_llama(tmp_path / "llama")
    cfg = _config(installed_tree(tmp_path / "installed"), llama)
    runs = [tmp_path / "a", tmp_path / "b"]
    for folder in runs:
        proc = _run(folder, cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
    res = [folder / "results" for folder in runs]
    # the outputs a user reads
    for name in ("dga_weights.png", "dga_loss.png"):
        assert (res[0] / "plots" / name).stat().st_size > 1000
    for s in STRATEGIES:
        metrics = pl.read_parquet(res[0] / "metrics" / "dga" / s / "seed0.parquet")
        assert set(metrics["metric"]) >= {"loss"} and metrics["value"].is_finite().all()
    weights = {s: [pl.read_parquet(r / "domain_weights" / f"dga_{s}_seed0.parquet") for r in res] for s in STRATEGIES}
    dga = weights["dga"][0]
    assert set(dga["domain"]) == {"code", "licenses", "reference"}
    assert dga.group_by("step").agg(pl.col("weight").sum())["weight"].to_list() == pytest.approx([1.0] * 4)
    # DGA moved the mixture away from its uniform start
    assert dga["weight"].n_unique() > 1
    # the same config and seed, from scratch (data, LoRA init, batches): the same α trajectory, bit for bit
    for s in STRATEGIES:
        assert weights[s][0].equals(weights[s][1]), s
    for s in STRATEGIES:
        a, b = (pl.read_parquet(r / "metrics" / "dga" / s / "seed0.parquet") for r in res)
        assert a.equals(b), s
