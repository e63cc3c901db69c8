"""Reliability: determinism of whole runs (bit for bit across fresh runs, --cores and hash seeds) and export safety.

Interruption is in `tests/test_interrupt.py`, bad input in `tests/test_bad_input.py`, random configs and tables in
`tests/test_properties.py`, locks and concurrent catalog reads in `tests/test_concurrency.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import TINY, snakemake, write_config, write_results

from datasel.cli import main
from datasel.errors import DataselError
from datasel.export import export_selection
from datasel.selection.make import make_selection
from datasel.store import write_table

TARGETS = [
    "results/scores/el2n.parquet",
    "results/scores/grand.parquet",
    "results/selections/full_keep100.parquet",
    "results/metrics/train/el2n_offset_keep50/seed1.parquet",
]


def _fingerprint(work: Path) -> dict[str, str]:
    """sha256 of every table and JSON file, and of every checkpoint's tensors, under results/."""
    res = work / "results"
    out = {}
    for f in sorted(res.rglob("*")):
        rel = str(f.relative_to(res))
        if f.suffix in (".parquet", ".json"):
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.suffix == ".pt":
            ckpt = torch.load(f, map_location="cpu", weights_only=False)
            h = hashlib.sha256(json.dumps({k: v for k, v in ckpt.items() if k != "state_dict"}, sort_keys=True,
                                          default=str).encode())
            for k, v in sorted(ckpt["state_dict"].items()):
                h.update(k.encode())
                h.update(v.numpy().tobytes())
            out[rel] = h.hexdigest()
    return out


def test_two_fresh_runs_give_the_same_bytes_across_cores_and_hash_seeds(tmp_path, monkeypatch):
    runs = {}
    for name, cores, hashseed in [("a", "2", "0"), ("b", "1", "12345")]:
        work = tmp_path / name
        write_config(work, TINY)
        # PYTHONHASHSEED changes set/dict-of-str iteration order: nothing may depend on it
        monkeypatch.setenv("PYTHONHASHSEED", hashseed)
        snakemake(work, "--cores", cores, *TARGETS)
        runs[name] = _fingerprint(work)
    a, b = runs["a"], runs["b"]
    assert set(a) == set(b)
    # examples + meta, 6 checkpoints, 2 scores, 2 selections, 1 metrics table
    assert len(a) >= 13 and sum(k.endswith(".pt") for k in a) == 6
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"not bit-identical across fresh runs: {differ}"
    # and the metrics really are training results, not constants
    m = pl.read_parquet(tmp_path / "a" / TARGETS[3])
    acc = m.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy")).get_column("value").item()
    assert 0.0 < acc < 1.0


# ---- export safety (round trips and refusals of non-empty folders are in tests/test_export.py) ----

@pytest.fixture()
def results(tmp_path, tiny_examples):
    df, meta = tiny_examples
    res, scores = write_results(tmp_path, df, meta, "max", "m")
    sel = make_selection(df, scores, "m_top", {"policy": "top", "score": "m", "stratify": True}, 0.4, 0)
    write_table(sel, res / "selections" / "m_top_keep40.parquet", "selections")
    return res, sel, df


def _expected(sel: pl.DataFrame, df: pl.DataFrame) -> pl.DataFrame:
    """Exactly the selected rows with every field a trainer gets, built independently of datasel.export: the
    source row number, the original (pre-noise) label, the inputs, the noise flag, weight and position."""
    source = df if "source_row" in df.columns else df.with_row_index("source_row")  # prepare's row order otherwise
    source = source.with_columns(pl.col("source_row").cast(pl.Int64))
    kept = sel.filter(pl.col("selected")).select("example_id", "weight", "position")
    rows = kept.join(source, on="example_id").select("source_row", "x", pl.col("label_orig").alias("label"),
                                                     "is_noisy", "weight", "position")
    return rows.sort("source_row")


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_round_trip_returns_exactly_the_selected_rows_and_fields(tmp_path, results, fmt):
    res, sel, df = results
    out = tmp_path / "out"
    assert main(["export", "m_top_keep40", "--format", fmt, "--out", str(out), "--results", str(res)]) == 0
    if fmt == "hf":
        import datasets

        back = pl.from_arrow(datasets.load_from_disk(str(out)).data.table)
    else:
        back = pl.read_parquet(out / "m_top_keep40.parquet")
    want = _expected(sel, df)
    assert back.height == sel.get_column("selected").sum() == want.height
    assert sorted(back.columns) == sorted(want.columns)
    got = back.select(want.columns).with_columns(pl.col("x").cast(pl.List(pl.Float32))).sort("source_row")
    assert got.equals(want)
    assert not list(tmp_path.glob(".tmp-*"))


def test_export_into_an_existing_empty_folder(tmp_path, results):
    res, sel, _ = results
    out = tmp_path / "empty"
    out.mkdir()
    export_selection(res, "m_top_keep40", "jsonl", out)
    assert pl.read_ndjson(out / "m_top_keep40.jsonl").height == sel.get_column("selected").sum()


def test_export_refuses_a_file_in_the_way_even_with_overwrite(tmp_path, results):
    res, _, _ = results
    out = tmp_path / "taken"
    out.write_text("someone's notes")
    for overwrite in (False, True):
        with pytest.raises(DataselError, match="file is in the way"):
            export_selection(res, "m_top_keep40", "parquet", out, overwrite=overwrite)
    assert out.read_text() == "someone's notes"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_export_leaves_no_partial_folder_and_keeps_the_old_one(tmp_path, results, monkeypatch, existing):
    res, _, _ = results
    out = tmp_path / "out"
    if existing:
        export_selection(res, "m_top_keep40", "jsonl", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if existing else None

    def crash(self, path, *a, **k):
        Path(path).write_bytes(b"PAR1 half a file")  # what a crash mid-write leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(DataselError, match="disk full"):
        export_selection(res, "m_top_keep40", "parquet", out, overwrite=existing)
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))
