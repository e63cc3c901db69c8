"""Export: exactly the selected rows, the user's fields, curriculum order; round trips (safety: test_export_safety.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import write_results

from datasel.cli import main
from datasel.errors import DataselError
from datasel.export import export_selection
from datasel.selection.make import make_selection
from datasel.store import write_table


@pytest.fixture()
def results(tmp_path, tiny_examples):
    df, meta = tiny_examples
    res, scores = write_results(tmp_path, df, meta, "sum", "s")
    cfg = {"policy": "top", "curriculum": {"order": "easy_to_hard", "score": "s"}}
    sel = make_selection(df, scores, "sum", cfg, 0.3, 0, order_scores=scores)
    write_table(sel, res / "selections" / "sum_keep30.parquet", "selections")
    return res, sel, df


def _read(out, fmt):
    if fmt == "hf":
        import datasets

        return pl.from_arrow(datasets.load_from_disk(str(out)).data.table)
    return (pl.read_parquet if fmt == "parquet" else pl.read_ndjson)(out / f"sum_keep30.{fmt}")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_round_trip(tmp_path, results, fmt):
    res, sel, df = results
    out = export_selection(res, "sum_keep30", fmt, tmp_path / f"out_{fmt}")
    back = _read(out, fmt)
    # the user's view: their row number, original label and inputs, plus weight and curriculum position
    assert back.columns[0] == "source_row" and back.columns[-3:] == ["is_noisy", "weight", "position"]
    assert sorted(back.columns[1:-3]) == ["label", "x"]
    source = df if "source_row" in df.columns else df.with_row_index("source_row")  # prepare's row order otherwise
    source = source.with_columns(pl.col("source_row").cast(pl.Int64))
    kept = sel.filter(pl.col("selected")).sort("position").join(source, on="example_id", how="left", maintain_order="left")
    assert back.get_column("source_row").to_list() == kept.get_column("source_row").to_list()
    assert back.get_column("position").to_list() == list(range(kept.height))
    assert back.get_column("label").to_list() == kept.get_column("label_orig").to_list()
    assert back.get_column("is_noisy").to_list() == kept.get_column("is_noisy").to_list()
    np.testing.assert_array_equal(np.array(back.get_column("x").to_list(), dtype=np.float32),
                                  np.array(kept.get_column("x").to_list(), dtype=np.float32))


def test_internal_adds_the_pipeline_columns(tmp_path, results):
    res, sel, df = results
    back = _read(export_selection(res, "sum_keep30", "parquet", tmp_path / "out", internal=True), "parquet")
    assert {"example_id", "source", "split", "label_orig", "datasel_label", "x", "label"} <= set(back.columns)
    kept = sel.filter(pl.col("selected")).sort("position")
    assert back.get_column("example_id").to_list() == kept.get_column("example_id").to_list()
    noisy = df.join(back.select("example_id"), on="example_id", how="semi").sort("example_id")
    assert back.sort("example_id").get_column("datasel_label").to_list() == noisy.get_column("label").to_list()


def test_refuses_non_empty_folder_and_unknown_selection(tmp_path, results, capsys):
    res, _, _ = results
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataselError, match="not empty"):
        export_selection(res, "sum_keep30", "parquet", out)
    with pytest.raises(DataselError, match="did not write"):
        export_selection(res, "sum_keep30", "parquet", out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    code = main(["export", "nope_keep50", "--out", str(tmp_path / "x"), "--results", str(res)])
    err = capsys.readouterr().err
    assert code == 1 and "unknown selection 'nope_keep50'" in err and "sum_keep30" in err
    assert "Traceback" not in err
