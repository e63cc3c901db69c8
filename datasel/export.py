"""Export a selection to a folder a trainer can read: Parquet, JSON lines or a Hugging Face ``datasets`` folder.

Rows are the selected examples with their original fields, id, weight and curriculum position, in ``position``
order when the selection has one. The folder is written under a temporary name and renamed when complete, and an
existing non-empty folder is never replaced unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import polars as pl

from datasel.errors import DataselError
from datasel.store import read_table

FORMATS = ("parquet", "jsonl", "hf")


def available_selections(results: Path) -> list[str]:
    return sorted(p.stem for p in (results / "selections").glob("*.parquet") if not p.name.startswith("."))


def selected_rows(results: Path, selection: str) -> pl.DataFrame:
    """The exported frame for one selection."""
    path = results / "selections" / f"{selection}.parquet"
    if not path.exists():
        names = available_selections(results)
        raise DataselError(
            f"unknown selection '{selection}'",
            file=path,
            field="SELECTION",
            fix=f"use one of: {', '.join(names)}" if names else "run the workflow first (snakemake --cores all)",
        )
    sel = read_table(path, "selections").filter(pl.col("selected"))
    examples = read_table(results / "examples" / "examples.parquet", "examples")
    meta = json.loads((results / "examples" / "meta.json").read_text())
    fields = [c for c in examples.columns if c not in ("source", "label_orig", "is_noisy")]
    rows = sel.select("example_id", "weight", "position").join(examples.select(fields), on="example_id", how="inner")
    if rows.height != sel.height:
        raise DataselError(f"{sel.height - rows.height} selected ids are not in the examples table", file=path,
                           fix="the selection is stale: rerun the workflow")
    classes = meta.get("classes", [])
    if classes and classes != [str(i) for i in range(len(classes))]:
        rows = rows.with_columns(pl.col("label").replace_strict(dict(enumerate(classes)), return_dtype=pl.String).alias("label_name"))
    order = ["position", "example_id"] if rows.get_column("position").null_count() == 0 else ["example_id"]
    return rows.sort(order)


def export_selection(results: str | Path, selection: str, fmt: str, out: str | Path, overwrite: bool = False) -> Path:
    results, out = Path(results), Path(out)
    if fmt not in FORMATS:
        raise DataselError(f"unknown format '{fmt}'", field="--format", fix=f"use one of {FORMATS}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataselError("the output folder exists and is not empty", file=out, field="--out",
                           fix="choose a new folder, or pass --overwrite")
    rows = selected_rows(results, selection)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        if fmt == "parquet":
            rows.write_parquet(tmp / f"{selection}.parquet")
        elif fmt == "jsonl":
            rows.write_ndjson(tmp / f"{selection}.jsonl")
        else:
            import datasets

            datasets.Dataset(rows.to_arrow()).save_to_disk(str(tmp))
        old = None
        if out.exists():
            # move the previous export (a folder, or a file in the way) aside before renaming the new one in, so
            # `out` is always either the whole old export or the whole new one; then drop the old one
            old = out.parent / f".tmp-old-{tmp.name}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
