"""Class balance, CCS and filters end to end on a tiny config (marked slow: ~35 jobs): forgetting/AUM from the proxies' epoch tables,
cleanlab from out-of-fold proxies, CCS and filter selections, and both reports' new sections (class mix, noise
detection, margin plot)."""

from __future__ import annotations

import copy

import duckdb
import polars as pl
import pytest
from conftest import TINY, snakemake, write_config


@pytest.mark.slow
def test_dynamics_scores_ccs_filter_and_noise_detection_in_both_reports(tmp_path):
    pytest.importorskip("cleanlab")
    cfg = copy.deepcopy(TINY)
    cfg["stages"] = ["selection", "quality"]
    cfg["scoring"] = {"el2n": {"method": "el2n", "epoch": 1}, "aum": {"method": "aum"},
                      "forgetting": {"method": "forgetting"}, "cleanlab": {"method": "cleanlab", "folds": 2}}
    cfg["selection"]["policies"] = {"random": {"policy": "random"},
                                    "ccs_aum": {"policy": "ccs", "score": "aum", "beta": 0.1, "bins": 5},
                                    "filter_cleanlab": {"policy": "filter", "score": "cleanlab"}}
    # the grid: random and the filter only (CCS runs in the selection stage), to keep the job count down
    cfg["quality"] = {"noise": [0.2], "fractions": [0.5, 1.0], "seeds": [0, 1], "curriculum": None,
                      "policies": {"random": {"policy": "random"},
                                   "filter_cleanlab": {"policy": "filter", "score": "cleanlab"}},
                      "regime": "tiny", "budget": {"unit": "steps", "value": 20}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, timeout=2400)  # ~35 jobs: about 3 minutes on an idle 2-core machine, far more when shared
    res = tmp_path / "results"
    epochs = pl.read_parquet(res / "proxy/seed1/epochs.parquet")
    train = pl.read_parquet(res / "examples/examples.parquet").filter(pl.col("split") == "train")
    assert epochs.height == train.height * 3 and set(epochs["epoch"]) == {1, 2, 3}  # 3 proxy epochs
    summary = (res / "report/summary.md").read_text()
    assert "Class balance: share of each class" in summary and "class mix gap" in summary
    assert "Finding the injected noisy labels" in summary and "`cleanlab`" in summary and "`aum`" in summary
    assert "filter_cleanlab_keep100" in summary  # the filtered full set is trained beside the full noisy set
    quality = (res / "quality/report/quality.md").read_text()
    assert "Regime: tiny." in quality and "Filtered sets" in quality and "Best datasel score" in quality
    assert (res / "quality/report/margin_vs_fraction.png").stat().st_size > 5_000
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(distinct seed) from proxy_epochs").fetchall() == [(2,)]
