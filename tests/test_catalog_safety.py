"""The catalog is safe and always true: any folder name works and none runs SQL, one view per declared table kind
(a stray file joins none), views independent of the current folder, tables written after the catalog appear in it,
reads retried across a rerun's removal, and `datasel sql` from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import ROOT, TINY, snakemake, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasel.errors import DataselError
from datasel.store import write_table
from datasel.store.catalog import build_catalog, query
from datasel.store.sql import sql_identifier, sql_literal


def _scores(n: int, method: str = "m") -> pl.DataFrame:
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(n)], "method": [method] * n,
                         "score": [float(i) for i in range(n)], "rank": list(range(1, n + 1))})


def _examples(n: int) -> pl.DataFrame:
    return pl.DataFrame({"example_id": [f"x{i}" for i in range(n)], "source": ["s"] * n, "split": ["train"] * n,
                         "label": [i % 2 for i in range(n)], "label_orig": [i % 2 for i in range(n)],
                         "is_noisy": [False] * n})


def _selection(n: int, name: str) -> pl.DataFrame:
    return pl.DataFrame({"selection": [name] * n, "example_id": [f"e{i}" for i in range(n)],
                         "selected": [i % 2 == 0 for i in range(n)], "weight": [1.0] * n, "position": list(range(n))})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATASEL_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "datasel.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


# any character a folder name may hold on Linux: everything but "/" and NUL
NAMES = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=16)
NAMES = NAMES.filter(lambda s: s not in (".", "..") and not s.startswith(".") and len(s.encode()) < 200)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_any_folder_name_works_as_project_and_run_folder(name):
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / name / "results"
        write_table(_scores(3), res / "scores" / "a.parquet", "scores")
        write_table(_scores(2, "q"), res / "quality" / name / "scores" / f"{name}.parquet", "scores")
        if "\\" in name or "?" in name:
            # DuckDB reads "\" in a path as a separator and "?" as the start of connection options: it cannot open a
            # database there (nor could any reader), so the catalog is refused clearly
            with pytest.raises(DataselError, match="DuckDB cannot open a database"):
                build_catalog(res, res / "catalog.duckdb")
            assert not list(res.glob(".tmp-*")) and not (res / "catalog.duckdb").exists()
            return
        assert build_catalog(res, res / "catalog.duckdb") == {"scores": 5}
        rows = query(res / "catalog.duckdb", "select run_dir, method, count(*) from scores group by all order by 1")
        assert rows == [("", "m", 3), (f"quality/{name}", "q", 2)]


def test_run_folders_with_a_question_mark_or_a_backslash_work(tmp_path):
    res = tmp_path / "results"
    write_table(_scores(2), res / "back\\slash" / "scores" / "a.parquet", "scores")  # listed file by file
    write_table(_scores(4), res / "what?" / "scores" / "a.parquet", "scores")  # globbed, "?" escaped
    write_table(_scores(1), res / "scores" / "a.parquet", "scores")
    assert build_catalog(res, res / "catalog.duckdb") == {"scores": 7}
    got = dict(query(res / "catalog.duckdb", "select run_dir, count(*) from scores group by 1"))
    assert got == {"": 1, "back\\slash": 2, "what?": 4}
    # a backslash and a glob character in one path: DuckDB can neither glob nor open it; refused, old catalog kept
    write_table(_scores(2), res / "b\\[x]" / "scores" / "a.parquet", "scores")
    with pytest.raises(DataselError, match="backslash"):
        build_catalog(res, res / "catalog.duckdb")
    assert query(res / "catalog.duckdb", "select count(*) from scores") == [(7,)]


def test_sql_quoting_round_trips_any_text():
    con = duckdb.connect()
    for text in ["plain", "it's", 'say "hi"', "x'); drop table t; --", "back\\slash", "ünï😀", "new\nline", "'"]:
        assert con.execute(f"select {sql_literal(text)} as {sql_identifier(text)}").fetchone() == (text,)
        assert con.execute(f"select {sql_literal(text)} as {sql_identifier(text)}").description[0][0] == text


def test_a_crafted_folder_or_file_name_runs_no_statement(tmp_path, monkeypatch):
    crafted = "x'); COPY (SELECT 1) TO 'pwn.csv'; --"
    monkeypatch.chdir(tmp_path)  # where a relative COPY would write
    res = tmp_path / crafted / "results"
    write_table(_scores(4), res / "scores" / f"{crafted}.parquet", "scores")
    write_table(_scores(1), res / crafted / "scores" / "a.parquet", "scores")  # also as a run folder
    assert build_catalog(res, res / "catalog.duckdb") == {"scores": 5}
    assert query(res / "catalog.duckdb", "select count(*) from scores") == [(5,)]
    assert {r[0] for r in query(res / "catalog.duckdb", "select distinct run_dir from scores")} == {"", crafted}
    assert not list(tmp_path.rglob("pwn.csv"))


def test_one_view_per_declared_table_stray_files_join_none(tmp_path):
    res = tmp_path / "results"
    write_table(_examples(6), res / "examples" / "examples.parquet", "examples")
    write_table(_examples(4), res / "examples" / "dga_domains.parquet", "examples")  # DGA's own dataset
    pl.DataFrame({"other": [1, 2, 3]}).write_parquet(res / "examples" / "notes.parquet")  # a stray file
    pl.DataFrame({"example_id": ["a"]}).write_parquet(res / "features" / "ids.parquet", mkdir=True)
    write_table(_scores(3), res / "scores" / "s.parquet", "scores")
    counts = build_catalog(res, res / "catalog.duckdb")
    assert counts == {"examples": 6, "dga_domains": 4, "scores": 3}
    cols = {r[0] for r in query(res / "catalog.duckdb", "select column_name from information_schema.columns "
                                                        "where table_name = 'examples'")}
    assert "other" not in cols
    tables = {r[0] for r in query(res / "catalog.duckdb", "select table_name from information_schema.tables")}
    assert tables == {"examples", "dga_domains", "scores", "datasel_catalog"}


def test_catalog_opened_from_another_project_reads_its_own_rows(tmp_path, monkeypatch):
    mine, other = tmp_path / "mine", tmp_path / "other"
    write_table(_scores(3, "mine"), mine / "results" / "scores" / "a.parquet", "scores")
    write_table(_scores(7, "other"), other / "results" / "scores" / "a.parquet", "scores")
    monkeypatch.chdir(tmp_path)  # built from neither project's folder
    build_catalog(Path("mine/results"), Path("mine/results/catalog.duckdb"))
    build_catalog(other / "results", other / "results" / "catalog.duckdb")
    monkeypatch.chdir(other)  # a folder with its own results/ holding the same relative paths
    con = duckdb.connect(str(mine / "results" / "catalog.duckdb"), read_only=True)
    assert con.sql("select method, count(*) from scores group by 1").fetchall() == [("mine", 3)]
    con.close()
    out = _cli("sql", "select method, count(*) as n from scores group by 1", "--results", str(mine / "results"),
               "--csv", cwd=other)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["method,n", "mine,3"]
    # a moved results folder: a clear error naming the folder the catalog reads, never another folder's rows
    mine.rename(tmp_path / "moved")
    with pytest.raises(DataselError, match="no longer exists") as err:
        query(tmp_path / "moved" / "results" / "catalog.duckdb", "select count(*) from scores", retries=1)
    assert str(mine / "results") in str(err.value) and "datasel catalog" in str(err.value)


def test_a_table_written_after_the_catalog_appears_without_a_rebuild(tmp_path):
    res = tmp_path / "results"
    write_table(_selection(4, "a_keep50"), res / "selections" / "a_keep50.parquet", "selections")
    build_catalog(res, res / "catalog.duckdb")
    write_table(_selection(6, "b_keep30"), res / "selections" / "b_keep30.parquet", "selections")
    rows = query(res / "catalog.duckdb", "select selection, count(*) from selections group by 1 order by 1")
    assert rows == [("a_keep50", 4), ("b_keep30", 6)]


def test_query_retries_a_table_a_rerun_removed_then_fails_clearly(tmp_path):
    res = tmp_path / "results"
    path = res / "examples" / "examples.parquet"
    write_table(_examples(5), path, "examples")
    build_catalog(res, res / "catalog.duckdb")
    saved = path.read_bytes()
    path.unlink()  # Snakemake removes a job's output before it reruns the job

    def rerun():
        time.sleep(0.4)
        path.write_bytes(saved)

    t = threading.Thread(target=rerun)
    t.start()
    try:
        assert query(res / "catalog.duckdb", "select count(*) from examples") == [(5,)]
    finally:
        t.join()
    path.unlink()
    start = time.monotonic()
    with pytest.raises(DataselError, match="missing or was being rewritten") as err:
        query(res / "catalog.duckdb", "select count(*) from examples", retries=2)
    assert time.monotonic() - start < 5
    assert "rerun the query" in str(err.value)


def test_query_waits_for_a_catalog_being_rebuilt_and_refuses_a_missing_one_at_once(tmp_path):
    res = tmp_path / "results"
    write_table(_scores(3), res / "scores" / "a.parquet", "scores")
    db = res / "catalog.duckdb"
    build_catalog(res, db)
    saved = db.read_bytes()
    db.unlink()  # Snakemake removed it; the rerun's build is writing its temporary
    (res / ".tmp-catalog.duckdb.abc123").write_bytes(b"")

    def rebuild():
        time.sleep(0.4)
        db.write_bytes(saved)
        (res / ".tmp-catalog.duckdb.abc123").unlink()

    t = threading.Thread(target=rebuild)
    t.start()
    try:
        assert query(db, "select count(*) from scores") == [(3,)]
    finally:
        t.join()
    db.unlink()
    start = time.monotonic()
    with pytest.raises(DataselError, match="no catalog"):
        query(db, "select 1")
    assert time.monotonic() - start < 1  # nothing is rebuilding it: no waiting


def test_sql_command_prints_results_and_reports_errors_once(tmp_path):
    res = tmp_path / "results"
    write_table(_scores(3, "el2n"), res / "scores" / "el2n.parquet", "scores")
    build_catalog(res, res / "catalog.duckdb")
    out = _cli("sql", "select method, count(*) as n from scores group by 1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "el2n" in out.stdout and "3" in out.stdout
    bad = _cli("sql", "select * from scoers", cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.count("datasel: error:") == 1 and "scores" in bad.stderr
    missing = _cli("sql", "select 1", "--results", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 1 and "no catalog" in missing.stderr and "Traceback" not in missing.stderr


def test_a_selection_built_as_an_explicit_target_after_the_catalog_is_in_it(tmp_path):
    # the random policy needs no proxy or scores: three jobs in all (prepare, two selections)
    write_config(tmp_path, TINY)
    snakemake(tmp_path, "results/selections/random_keep50.parquet")
    built = _cli("catalog", cwd=tmp_path)  # the catalog rule runs this same build_catalog
    assert built.returncode == 0, built.stderr
    target = "results/selections/random_keep30.parquet"  # not in the config's fractions: only an explicit target
    snakemake(tmp_path, target)
    other = tmp_path / "elsewhere"
    other.mkdir()
    out = _cli("sql", "select selection, count(*) filter (where selected) as kept from selections group by 1 "
                      "order by 1", "--results", str(tmp_path / "results"), "--csv", cwd=other)
    assert out.returncode == 0, out.stderr
    kept = dict(line.split(",") for line in out.stdout.splitlines()[1:])
    assert set(kept) == {"random_keep50", "random_keep30"}
    assert int(kept["random_keep30"]) < int(kept["random_keep50"])
    assert not list((tmp_path / "results").rglob("*.wal")) and not list((tmp_path / "results").rglob(".tmp-*"))
