"""The GAPrune stage through Snakemake on config/experiments/gaprune_tiny.yaml (the packaged all-MiniLM-L6-v2, a few
dozen stdlib triplets): tables in the catalog, a transformers-loadable pruned model, a plot, a no-op rerun, and a
schema refusal naming the bad key."""

from __future__ import annotations

import shutil

import duckdb
import pytest
import yaml
from conftest import ROOT, snakemake


def _experiment(workdir, overrides: dict | None = None) -> str:
    shutil.copytree(ROOT / "config", workdir / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load((ROOT / "config" / "experiments" / "gaprune_tiny.yaml").read_text())
    for k, v in (overrides or {}).items():
        cfg["gaprune"][k] = v
    path = workdir / "config" / "experiments" / "test_gaprune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_gaprune_stage_end_to_end(tmp_path, monkeypatch) -> None:
    exp = _experiment(tmp_path)
    snakemake(tmp_path, "--configfile", exp)
    res = tmp_path / "results"
    assert (res / "plots" / "gaprune.png").stat().st_size > 1000
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    monkeypatch.chdir(tmp_path)  # catalog views hold paths relative to the folder that holds results/
    sels = {r[0] for r in con.execute("select distinct selection from metrics where method in "
                                      "('dense', 'dai', 'magnitude')").fetchall()}
    assert {"dense_s00_oneshot", "dai_s50_oneshot", "dai_s50_retrained", "magnitude_s50_retrained"} <= sels
    splits = {r[0] for r in con.execute("select distinct split from metrics where method = 'dai'").fetchall()}
    assert splits == {"domain", "general"}
    rows = con.execute("select method, sum(sparsity * numel) / sum(numel), count(*) from param_scores "
                       "where method in ('dai', 'magnitude') group by 1 order by 1").fetchall()
    assert [r[0] for r in rows] == ["dai", "magnitude"]
    assert all(abs(r[1] - 0.5) < 1e-3 and r[2] == 12 for r in rows)  # 6 layers × 2 MLP matrices, 50% overall
    n = con.execute("select count(*) from scores where method = 'gaprune_example'").fetchone()[0]
    assert n == 16
    from transformers import AutoModel

    model = AutoModel.from_pretrained(res / "gaprune" / "models" / "dai_s50" / "model")
    w = model.encoder.layer[0].intermediate.dense.weight
    assert 0.3 < float((w == 0).float().mean()) < 0.7
    dry = snakemake(tmp_path, "--configfile", exp, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_gaprune_config_refused_with_the_key(tmp_path) -> None:
    exp = _experiment(tmp_path, {"sparsities": [1.5]})
    proc = snakemake(tmp_path, "--configfile", exp, "-n", check=False)
    assert proc.returncode != 0
    assert "1.5" in proc.stdout + proc.stderr
