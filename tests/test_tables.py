"""Table I/O: schema checks at the boundary, atomic writes, corrupt files refused, the DuckDB catalog."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from datasel.errors import DataError
from datasel.store import atomic_path, read_table, write_table
from datasel.store.catalog import build_catalog


def _scores(n=5):
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(n)], "method": ["m"] * n,
                         "score": [float(i) for i in range(n)], "rank": list(range(1, n + 1))})


def test_missing_column_and_wrong_dtype_are_named(tmp_path):
    with pytest.raises(DataError, match="lacks column") as err:
        write_table(_scores().drop("rank"), tmp_path / "s.parquet", "scores")
    assert err.value.field == "rank"
    with pytest.raises(DataError, match="dtype") as err:
        write_table(_scores().with_columns(pl.col("score").cast(pl.String)), tmp_path / "s.parquet", "scores")
    assert err.value.field == "score"
    assert not (tmp_path / "s.parquet").exists()


def test_duplicate_ids_refused(tmp_path):
    df = pl.concat([_scores(), _scores().head(1)])
    with pytest.raises(DataError, match="duplicated 'example_id'"):
        write_table(df, tmp_path / "s.parquet", "scores")


def test_lossless_widening_is_cast(tmp_path):
    df = _scores().with_columns(pl.col("rank").cast(pl.Int32))
    write_table(df, tmp_path / "s.parquet", "scores")
    assert read_table(tmp_path / "s.parquet", "scores").schema["rank"] == pl.Int64


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_truncated_parquet_is_refused(tmp_path):
    path = tmp_path / "s.parquet"
    write_table(_scores(200), path, "scores")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read as Parquet") as err:
        read_table(path, "scores")
    assert "rerun" in str(err.value)


def test_catalog_has_a_view_per_table(tmp_path, monkeypatch):
    results = tmp_path / "results"
    write_table(_scores(), results / "scores" / "a.parquet", "scores")
    write_table(_scores(3).with_columns(pl.lit("b").alias("method")), results / "scores" / "b.parquet", "scores")
    counts = build_catalog(results, results / "catalog.duckdb")
    assert counts == {"scores": 8}
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect(str(results / "catalog.duckdb"), read_only=True)
    assert dict(con.sql("select method, count(*) from scores group by 1").fetchall()) == {"m": 5, "b": 3}
