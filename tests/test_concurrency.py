"""Concurrency: a second Snakemake in a running folder is refused by Snakemake's lock with a clear message (and the
first run is not disturbed); the DuckDB catalog stays readable while tables and the catalog are rewritten."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import duckdb
import polars as pl
from conftest import TINY, snakemake, snakemake_cmd, write_config

from datasel.store import write_table
from datasel.store.catalog import build_catalog, query

TARGET = "results/scores/el2n.parquet"


def test_second_snakemake_in_the_same_folder_is_refused(tmp_path):
    # The first run must still be going when the second has started up (imports, DAG: seconds on a loaded machine):
    # one core and more, longer proxy runs keep it busy for tens of seconds.
    cfg = {**TINY, "proxy": {**TINY["proxy"], "seeds": 4, "epochs": 30}}
    write_config(tmp_path, cfg)
    cmd = snakemake_cmd(tmp_path, TARGET, cores="1")
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "DATASEL_PROGRESS": "0"})
        try:
            # Snakemake takes its locks before the first job starts; wait for a job's log to be sure it holds them
            deadline = time.monotonic() + 240
            while not (tmp_path / "logs" / "results" / "prepare.log").exists():
                assert first.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first run never started a job"
                time.sleep(0.05)
            second = snakemake(tmp_path, TARGET, check=False)
            text = second.stdout + second.stderr
            assert first.poll() is None, "the first run ended before the second was tried; nothing was tested"
            assert second.returncode != 0
            assert "Directory cannot be locked" in text and "--unlock" in text and "Traceback" not in text
            # a dry run takes no lock and may look at a running folder
            assert snakemake(tmp_path, "-n", TARGET, check=False).returncode == 0
        finally:
            code = first.wait(timeout=600)
    assert code == 0, (tmp_path / "first.out").read_text()[-3000:]
    assert pl.read_parquet(tmp_path / TARGET).height == 432
    # the refused run left no trace: the lock is released and nothing is left to do
    locks = tmp_path / ".snakemake" / "locks"
    assert not locks.exists() or not list(locks.iterdir())
    assert "Nothing to be done" in snakemake(tmp_path, "-n", TARGET).stdout


_WRITER = r"""
import sys, polars as pl
from pathlib import Path
from datasel.store import write_table
from datasel.store.catalog import build_catalog, query
res = Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    n = 10 + i % 5   # each rewrite changes the row count, so a torn read would show a count never written
    df = pl.DataFrame({"example_id": [f"e{j}" for j in range(n)], "method": ["b"] * n,
                       "score": [float(j) for j in range(n)], "rank": list(range(1, n + 1))})
    write_table(df, res / "scores" / "b.parquet", "scores")
    build_catalog(res, res / "catalog.duckdb")
print("writer done")
"""


def test_catalog_is_readable_while_a_run_rewrites_tables_and_catalog(tmp_path):
    res = tmp_path / "results"
    n_a = 7
    write_table(pl.DataFrame({"example_id": [f"a{j}" for j in range(n_a)], "method": ["a"] * n_a,
                              "score": [0.5] * n_a, "rank": list(range(1, n_a + 1))}),
                res / "scores" / "a.parquet", "scores")
    write_table(pl.DataFrame({"example_id": ["e0"], "method": ["b"], "score": [0.0], "rank": [1]}),
                res / "scores" / "b.parquet", "scores")
    build_catalog(res, res / "catalog.duckdb")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(res), "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen, reads, torn = set(), 0, 0
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the catalog's views use paths relative to the folder that holds results/
    try:
        while writer.poll() is None or reads == 0:
            sql = "select method, count(*) from scores group by 1"
            # a bare query may be torn by a rewrite of a Parquet file it scans (an error, never wrong rows) ...
            con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
            try:
                counts = dict(con.sql(sql).fetchall())
                seen.add(counts["b"])
            except duckdb.Error:
                torn += 1
            finally:
                con.close()
            # ... and catalog.query retries such a read
            counts = dict(query(res / "catalog.duckdb", sql))
            assert counts["a"] == n_a
            seen.add(counts["b"])
            reads += 1
    finally:
        os.chdir(cwd)
    out, err = writer.communicate()
    assert writer.returncode == 0 and "writer done" in out, err[-2000:]
    # every count a reader saw is one some write produced in full
    assert seen <= {1, *range(10, 15)}, seen
    assert reads > 5
    print(f"{reads} reads during 60 rewrites; {torn} bare reads torn (error, retried by catalog.query)")
    assert not list(res.rglob(".tmp-*"))
