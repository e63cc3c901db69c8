"""Instruction data: the files of the three roles, rendered by their format (:mod:`datasel.instruct.formats`:
alpaca, chat messages, ShareGPT, prompt/completion) and tokenized with the loss on the replies only (the
causal-LM task's batching, :mod:`datasel.tasks.causal_lm`).

Three files play three roles: the *pool* (candidates for selection, split ``train``), the *target* set (a few dozen
examples of the task one wants to get better at, split ``val``: LESS's validation set) and a held-out *test* set of
the same task (split ``test``: evaluation only). Each is jsonl / Parquet / csv or a ``datasets`` ``save_to_disk``
folder. A ``task`` column is optional: LESS averages over each target task and takes the best task.

Examples keep their original columns (``source_<role>.parquet``), so an export hands back the user's own rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from datasel.data.ids import content_ids, user_ids
from datasel.data.sources import read_data_file
from datasel.errors import DataError
from datasel.instruct.formats import Rendered, render_rows
from datasel.store import atomic_path
from datasel.tasks.causal_lm import IGNORE, encode

log = logging.getLogger(__name__)

ROLES = {"pool": "train", "target": "val", "test": "test"}


def read_instructions(path: str | Path, role: str) -> pl.DataFrame:
    """One role's file as read (row order kept), from jsonl / Parquet / csv or a ``save_to_disk`` folder."""
    p = Path(path)
    if not p.exists():
        raise DataError("the instruction data file does not exist", file=p, field=f"data.instruct.{role}",
                        fix="point the path (relative to the run folder) at a jsonl, Parquet or datasets folder")
    if p.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise DataError(f"cannot load as a datasets folder ({type(exc).__name__})", file=p,
                            field=f"data.instruct.{role}", fix="give a folder written by Dataset.save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"a DatasetDict with splits {list(ds)}", file=p, field=f"data.instruct.{role}",
                            fix="save one split (ds['train'].save_to_disk(...)) per role")
        return pl.from_arrow(ds.data.table)
    df = read_data_file(p)
    if df.height == 0:
        raise DataError("the instruction data has no rows", file=p, field=f"data.instruct.{role}",
                        fix="give a file with at least one example")
    return df


def render(df: pl.DataFrame, cfg: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, list[Rendered]]:
    """The file's format (:mod:`datasel.instruct.formats`) and every row rendered into text parts, the parts that
    carry the loss marked."""
    return render_rows(df, cfg, tokenizer, where)


def example_ids(role: str, raw: pl.DataFrame, rendered: list[Rendered], id_column: str | None,
                where: str) -> list[str]:
    """``<role>-<user id>`` from ``data.instruct.id_column`` where the file has it, else ``<role>-<content hash>``
    (the rendered text and which parts are trained), stable when rows are added or reordered; repeated rows get
    ``-1``, ``-2``… in order. A pool file without the named id column is refused (a misspelt key would otherwise
    pass unseen)."""
    if not id_column or (id_column not in raw.columns and role != "pool"):
        return content_ids(role, (json.dumps([r.parts, r.trained]).encode() for r in rendered))
    if id_column not in raw.columns:
        raise DataError(f"the pool has no id column '{id_column}' (columns: {', '.join(raw.columns)})", file=where,
                        field="data.instruct.id_column", fix="name one of the pool's columns, or drop the key to "
                                                             "derive ids from the content")
    return user_ids(raw.get_column(id_column), role, where, "data.instruct.id_column")


def _tasks(raw: pl.DataFrame, col: str, where: str) -> list[str | None]:
    """The task of each row; None for every row when the file has no task column (never a made-up task)."""
    if not col or col not in raw.columns:
        return [None] * raw.height
    values = raw.get_column(col).to_list()
    nulls = [i for i, v in enumerate(values) if v is None]
    if nulls:
        raise DataError(f"the task column '{col}' is empty in {len(nulls)} row(s) (first: row {nulls[0] + 1})",
                        file=where, field="data.instruct.task_column",
                        fix="give every row its task, or remove the column (then no task share is reported)")
    return [str(v) for v in values]


def prepare_examples(cfg: dict[str, Any], tokenizer: Any, out_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The instruction examples table (every role) and the truncation report; original rows go to
    ``out_dir/source_<role>.parquet``. Rows whose trained tokens were all cut away are dropped and counted; a role
    left with no row is refused."""
    frames, report = [], {}
    for role, split in ROLES.items():
        path = cfg[role]
        raw = read_instructions(path, role)
        fmt, rendered = render(raw, cfg, tokenizer, str(path))
        parts = [list(r.parts) for r in rendered]
        trained = [list(r.trained) for r in rendered]
        enc, rep, dropped, full = encode(tokenizer, parts, trained, int(cfg["max_length"]))
        emptied = set(dropped)
        if len(emptied) == len(rendered):
            raise DataError(f"every completion was truncated away: all {len(rendered)} prompts are at least "
                            f"max_length={cfg['max_length']} tokens", file=path, field="data.instruct.max_length",
                            fix="raise data.instruct.max_length or shorten the prompts")
        if emptied:
            log.warning("%s: %d of %d rows lost their whole completion to max_length=%d and are left out",
                        path, len(emptied), len(rendered), cfg["max_length"])
        if rep["truncated"]:
            log.warning("%s: %d of %d rows were cut at max_length=%d tokens", path, rep["truncated"], len(rendered),
                        cfg["max_length"])
        n_comp = (enc.labels != IGNORE).sum(1).tolist()
        frame = pl.DataFrame({
            "example_id": example_ids(role, raw, rendered, cfg.get("id_column"), str(path)),
            "split": [split] * raw.height,
            "source_row": list(range(raw.height)),
            "task": pl.Series(_tasks(raw, cfg.get("task_column"), str(path)), dtype=pl.String),
            "prompt": [r.prompt for r in rendered],
            "completion": [r.completion for r in rendered],
            "parts": parts,
            "trained": trained,
            "completion_tokens": n_comp,
            "truncated": [n < f for n, f in zip(n_comp, full)],
        })
        frames.append(frame.filter(~pl.int_range(pl.len()).is_in(sorted(emptied))))
        report[role] = {**rep, "file": str(path), "format": fmt,
                        "task_column": bool(cfg.get("task_column")) and cfg["task_column"] in raw.columns}
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / f"source_{role}.parquet") as tmp:
            raw.write_parquet(tmp)
    table = pl.concat(frames)
    # the label (stratification class) is the task's index; rows without a task share one class after the tasks
    tasks = sorted(set(table.get_column("task").drop_nulls()))
    table = table.with_columns(pl.col("task").replace_strict({t: k for k, t in enumerate(tasks)}, default=len(tasks),
                                                             return_dtype=pl.Int64).alias("label"))
    return table, report


NO_TASK = "(no task)"  # the class of rows whose file has no task column: never a made-up task name


def build_lm_examples(cfg: dict[str, Any], tokenizer: Any, out_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The examples table of causal-LM data (``data.instruct``) in the selection chain's layout, and its meta.

    Pool rows are the ``train`` split, target rows ``val`` and test rows ``test``; the ``label`` is the task's index
    (rows without a task share the class ``(no task)``), so class-balance tables show each selection's task mix.
    The three files as read go to ``out_dir/source_<role>.parquet`` for the export.
    """
    table, report = prepare_examples(cfg, tokenizer, out_dir)
    tasks = sorted(set(table.get_column("task").drop_nulls()))
    classes = tasks + ([NO_TASK] if table.get_column("task").null_count() else [])
    table = table.with_columns(pl.lit("instruct").alias("source"), pl.col("label").alias("label_orig"),
                               pl.lit(False).alias("is_noisy"))
    first = ["example_id", "source", "split", "label", "label_orig", "is_noisy", "source_row"]
    table = table.select(first + [c for c in table.columns if c not in first])
    sizes = {s: int((table.get_column("split") == s).sum()) for s in ROLES.values()}
    meta = {"kind": "causal_lm", "source": "instruct", "num_classes": len(classes), "classes": classes,
            "label_dtype": "str", "sizes": sizes, "noisy": 0, "truncation": report,
            "max_length": int(cfg["max_length"]),
            "task_column": {role: rep["task_column"] for role, rep in report.items()},
            "columns": {"label": None, "id": None, "text": None, "features": None, "split": None, "domain": None},
            "fields": [], "input_dim": None, "duplicates_across_splits": {}}
    log.info("instruction examples: %s; tasks %s", sizes, tasks or "none given")
    return table, meta
