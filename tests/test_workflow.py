"""End-to-end runs of the Snakemake workflow on a tiny config: outputs, incremental reruns, determinism, and
clean refusals of bad configs."""

from __future__ import annotations

import copy
import re

import duckdb
import polars as pl
import pytest
from conftest import TINY, snakemake, write_config


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    write_config(work, TINY)
    snakemake(work)
    return work


def _jobs(dry_run_stdout: str) -> dict[str, int]:
    """Job counts from the dry run's 'Job stats' table."""
    table = dry_run_stdout.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_full_run_produces_every_table(done_run):
    res = done_run / "results"
    summary = pl.read_csv(res / "report" / "summary.csv")
    assert set(summary.get_column("selection")) == {"random_keep50", "el2n_offset_keep50", "full_keep100"}
    assert (summary.get_column("seeds") == 2).all()
    assert (res / "report" / "accuracy_vs_fraction.png").stat().st_size > 10_000
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    import os

    cwd = os.getcwd()
    os.chdir(done_run)
    try:
        views = {r[0] for r in con.sql("select table_name from information_schema.tables").fetchall()}
        assert {"examples", "scores", "selections", "metrics"} <= views
        assert dict(con.sql("select method, count(*) from scores group by 1").fetchall()) == {"el2n": 432, "grand": 432}
    finally:
        os.chdir(cwd)
    assert not list(res.rglob(".tmp-*"))


def test_nothing_to_do_after_a_complete_run(done_run):
    out = snakemake(done_run, "-n").stdout
    assert "Nothing to be done" in out


def test_changing_el2n_reruns_only_what_reads_it(done_run):
    cfg = copy.deepcopy(TINY)
    cfg["scoring"]["el2n"]["epoch"] = 3
    write_config(done_run, cfg)
    try:
        jobs = _jobs(snakemake(done_run, "-n").stdout)
    finally:
        write_config(done_run, TINY)
    assert jobs == {"score": 1, "select": 1, "train": 1, "report": 1, "catalog": 1, "all": 1}  # 1 job, 2 seeds


def test_same_config_same_bytes_across_cores(done_run, tmp_path):
    other = tmp_path / "again"
    write_config(other, TINY)
    tables = ("scores/el2n.parquet", "scores/grand.parquet", "selections/el2n_offset_keep50.parquet",
              "selections/random_keep50.parquet")
    snakemake(other, "--cores", "1", *(f"results/{t}" for t in tables))
    for sub in tables:
        a = pl.read_parquet(done_run / "results" / sub)
        b = pl.read_parquet(other / "results" / sub)
        assert a.equals(b), sub


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["selection"].__setitem__("fractions", [1.5]), "fractions"),
        (lambda c: c["proxy"].__setitem__("epochs", "ten"), "epochs"),
        (lambda c: c["selection"]["policies"]["el2n_offset"].__setitem__("score", "nope"), "selection.policies.el2n_offset.score"),
        (lambda c: c["scoring"]["el2n"].__setitem__("epoch", 2), "scoring.el2n.epoch"),
    ],
)
def test_bad_config_is_refused_before_any_job(tmp_path, mutate, needle):
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_bad_data_file_fails_its_rule_with_a_short_message(tmp_path):
    cfg = copy.deepcopy(TINY)
    # (a missing file is refused before any job: tests/test_config_strict.py; this one exists but lacks the column)
    (tmp_path / "bad.csv").write_text("b,label\n1,0\n2,1\n")
    cfg["data"] = {"source": "files", "path": "bad.csv", "feature_columns": ["a"]}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "datasel error in rule 'prepare'" in text and "bad.csv" in text and "fix:" in text
    assert not (tmp_path / "results" / "examples" / "examples.parquet").exists()
