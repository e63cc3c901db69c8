"""Export: exactly the selected rows, original fields, curriculum order; safe folders; round trips."""

from __future__ import annotations


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


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_round_trip(tmp_path, results, fmt):
    res, sel, df = results
    out = export_selection(res, "sum_keep30", fmt, tmp_path / f"out_{fmt}")
    if fmt == "hf":
        import datasets

        back = pl.from_arrow(datasets.load_from_disk(str(out)).data.table)
    else:
        back = (pl.read_parquet if fmt == "parquet" else pl.read_ndjson)(next(out.iterdir()))
    kept = sel.filter(pl.col("selected")).sort("position")
    assert back.get_column("example_id").to_list() == kept.get_column("example_id").to_list()
    orig = df.join(back.select("example_id"), on="example_id", how="semi").sort("example_id")
    assert back.sort("example_id").get_column("label").to_list() == orig.get_column("label").to_list()
    import numpy as np

    np.testing.assert_array_equal(np.array(back.sort("example_id").get_column("x").to_list(), dtype=np.float32),
                                  np.array(orig.get_column("x").to_list(), dtype=np.float32))
    assert {"x", "label", "split", "weight", "position"} <= set(back.columns)


def test_refuses_non_empty_folder_and_unknown_selection(tmp_path, results, capsys):
    res, _, _ = results
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataselError, match="not empty"):
        export_selection(res, "sum_keep30", "parquet", out)
    assert (out / "keep.txt").read_text() == "mine"
    export_selection(res, "sum_keep30", "parquet", out, overwrite=True)
    assert not (out / "keep.txt").exists()
    code = main(["export", "nope_keep50", "--out", str(tmp_path / "x"), "--results", str(res)])
    err = capsys.readouterr().err
    assert code == 1 and "unknown selection 'nope_keep50'" in err and "sum_keep30" in err
    assert "Traceback" not in err
