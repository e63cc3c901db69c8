"""Export a selection to a folder a trainer (or a spreadsheet) can read: Parquet, JSON lines, CSV or a Hugging Face
``datasets`` folder.

Rows are the kept examples in the user's terms (``frame.py``; on instruction data: the pool file's own rows,
``instruct.py``). The folder is written under a temporary name next
to ``--out``, read back and checked, marked as an export, flushed to disk and only then renamed into place, so
``--out`` is always either absent, the whole previous export or the whole new one. What ``--out`` may be and what
``--overwrite`` may replace is decided in ``folder.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from datasel.errors import DataselError
from datasel.export.folder import check_replaceable, export_lock, refuse_protected, remove_export, write_marker
from datasel.export.formats import FORMATS, check_format, require_format, verify, write_rows
from datasel.export.frame import DEFAULT_SPLITS, ORDERS, SPLITS, export_frame, parse_splits
from datasel.export.inputs import available_selections, load_inputs
from datasel.export.instruct import instruct_frame
from datasel.store.atomic import disk_error, follow_umask, fsync_path, fsync_tree, move_into_place

__all__ = ["DEFAULT_SPLITS", "FORMATS", "ORDERS", "SPLITS", "available_selections", "export_selection",
           "parse_splits", "selected_rows", "write_export"]

log = logging.getLogger(__name__)


def selected_rows(results: str | Path, selection: str, order: str | None = None, internal: bool = False,
                  splits: str | Sequence[str] | None = None) -> pl.DataFrame:
    """The exported frame for one selection."""
    return export_frame(load_inputs(results, selection), order, internal, parse_splits(splits))[0]


def export_selection(results: str | Path, selection: str, fmt: str, out: str | Path, overwrite: bool = False,
                     order: str | None = None, internal: bool = False,
                     splits: str | Sequence[str] | None = None) -> Path:
    """Write the kept rows of ``selection`` (and, with ``splits``, every row of the validation or test split) into
    the folder ``out``; returns ``out`` once it is complete on disk. Its marker records the splits it holds.

    ``results`` is a run's results folder; on instruction data the rows are the pool file's own
    (:mod:`datasel.export.instruct`; the pool is its only split).
    """
    results, out = Path(results), Path(os.path.abspath(out))
    require_format(fmt)
    wanted = parse_splits(splits)
    refuse_protected(out, results)
    inputs = load_inputs(results, selection)
    if inputs.meta.get("kind") == "causal_lm":  # instruction data: the pool file's own rows
        if wanted != DEFAULT_SPLITS:
            raise DataselError("instruction data exports pool rows only", file=inputs.path, field="--splits",
                               fix="leave --splits out (the target and test files are yours already)")
        rows, used = instruct_frame(inputs, order, internal)
        pool_rows = int((inputs.examples.get_column("split") == "train").sum())
        return write_export(rows, fmt, selection, out, overwrite,
                            {"order": used, "internal": internal, "splits": ["train"],
                             "rows_per_split": {"train": rows.height}, "train_rows_total": pool_rows})
    rows, used, counts = export_frame(inputs, order, internal, wanted)
    train_rows = int((inputs.examples.get_column("split") == "train").sum())
    return write_export(rows, fmt, inputs.name, out, overwrite,
                        {"order": used, "internal": internal, "splits": list(wanted), "rows_per_split": counts,
                         "train_rows_total": train_rows})


def write_export(rows: pl.DataFrame, fmt: str, name: str, out: str | Path, overwrite: bool, info: dict
                 ) -> Path:
    """Write ``rows`` as the export folder ``out`` (one writer at a time; only an earlier export is replaced)."""
    out = Path(os.path.abspath(out))
    check_format(rows, fmt)
    info = {"selection": name, "format": fmt, "rows": rows.height, "columns": rows.columns, **info}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with export_lock(out):
            exists = check_replaceable(out, overwrite)
            _write_and_place(rows, fmt, name, info, out, exists)
    except OSError as exc:
        raise _write_error(exc, out) from None
    log.info("exported %d rows of %s (%s, %s order) to %s", rows.height, name, fmt, info.get("order"), out)
    return out


def _write_and_place(rows: pl.DataFrame, fmt: str, stem: str, info: dict, out: Path, exists: bool) -> None:
    """Write into a temporary sibling folder, verify, mark and flush it, then swap it in for ``out``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        follow_umask(tmp)  # mkdtemp makes 0700; an export folder follows the umask like any other
        try:
            write_rows(rows, fmt, tmp, stem)
        except Exception as exc:
            if disk_error(exc):  # polars reports a full disk as a ComputeError, not an OSError
                raise _write_error(exc, out) from None
            raise
        verify(rows, fmt, tmp, stem)
        write_marker(tmp, info)
        fsync_tree(tmp)
        try:
            # the previous export (checked under the lock) steps aside first, so `out` is always one whole export,
            # and is removed by its marker only, never a file of the user's
            move_into_place(tmp, out, replace_folder=exists, discard=remove_export)
        except OSError as exc:
            raise DataselError(f"cannot move the export into place ({exc.strerror})", file=out, field="--out",
                               fix="another process created this folder meanwhile: choose a new one") from None
        fsync_path(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, never the user's


def _write_error(exc: BaseException, out: Path) -> DataselError:
    """A failed write as a clear error; a full disk (or file size limit) is named as such."""
    if disk_error(exc):
        return DataselError("disk full (or over the file size limit) while writing the export; nothing was "
                            "changed", file=out, field="--out", fix="free disk space, or export to another disk")
    what = getattr(exc, "strerror", None) or str(exc)
    where = getattr(exc, "filename", None) or out
    return DataselError(f"cannot write the export ({what})", file=where, field="--out",
                        fix="check that the folder is writable and retry")
