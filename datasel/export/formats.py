"""Write the exported rows in one format and read them back, so only a verified folder is renamed into place."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from datasel.errors import DataselError

FORMATS = ("parquet", "jsonl", "csv", "hf")
def require_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataselError(f"unknown format '{fmt}'", field="--format", fix=f"use one of {', '.join(FORMATS)}")


def check_format(rows: pl.DataFrame, fmt: str) -> None:
    """Refuse rows the format cannot hold (before anything is written)."""
    require_format(fmt)
    if fmt == "csv":
        nested = [c for c, t in rows.schema.items() if t.is_nested()]
        if nested:
            raise DataselError(f"CSV cannot hold the list column(s) {nested}", field="--format",
                               fix="use --format parquet or jsonl, or give the features as scalar columns "
                                   "(data.feature_columns)")


def file_names(fmt: str, stem: str) -> str:
    return {"parquet": f"{stem}.parquet", "jsonl": f"{stem}.jsonl", "csv": f"{stem}.csv", "hf": "."}[fmt]


def write_rows(rows: pl.DataFrame, fmt: str, folder: Path, stem: str) -> None:
    target = folder / file_names(fmt, stem)
    if fmt == "parquet":
        rows.write_parquet(target, statistics=True)
    elif fmt == "jsonl":
        rows.write_ndjson(target)
    elif fmt == "csv":
        rows.write_csv(target)
    else:
        import datasets

        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a bar per export is noise in a CLI that prints one line
        try:
            datasets.Dataset(rows.to_arrow()).save_to_disk(str(folder))
        finally:
            if not quiet:
                datasets.enable_progress_bars()


def read_back(fmt: str, folder: Path, stem: str) -> tuple[int, list[str]]:
    """Row count and column names of what was written, read the way a trainer would read it."""
    target = folder / file_names(fmt, stem)
    if fmt == "parquet":
        lf = pl.scan_parquet(target)
    elif fmt == "csv":
        lf = pl.scan_csv(target)
    elif fmt == "jsonl":
        with open(target, "rb") as f:
            # counted by lines: scan_ndjson infers a schema, which an empty export does not have
            n = sum(1 for line in f if line.strip())
        return n, []
    else:
        import datasets

        ds = datasets.load_from_disk(str(folder))
        return ds.num_rows, list(ds.column_names)
    return lf.select(pl.len()).collect().item(), list(lf.collect_schema().names())


def verify(rows: pl.DataFrame, fmt: str, folder: Path, stem: str) -> None:
    try:
        n, columns = read_back(fmt, folder, stem)
    except Exception as exc:  # whatever the reader raises, the export is not usable
        raise DataselError(f"the written export cannot be read back ({type(exc).__name__}: {str(exc)[:160]})",
                           file=folder, fix="check the disk and retry the export") from None
    if n != rows.height or (columns and columns != rows.columns):
        raise DataselError(f"the written export has {n} rows and columns {columns}, expected {rows.height} rows "
                           f"and {rows.columns}", file=folder, fix="check the disk and retry the export")
