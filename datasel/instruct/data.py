"""Instruction data: the files of the three roles, rendered by their format (:mod:`datasel.instruct.formats`:
alpaca, chat messages, ShareGPT, prompt/completion) and tokenized with the loss on the replies only.

Three files play three roles: the *pool* (candidates for selection, split ``train``), the *target* set (a few dozen
examples of the task one wants to get better at, split ``val``: LESS's validation set) and a held-out *test* set of
the same task (split ``test``: evaluation only). Each is jsonl / Parquet / csv or a ``datasets`` ``save_to_disk``
folder. A ``task`` column is optional: LESS averages over each target task and takes the best task.

Examples keep their original columns (``source_<role>.parquet``), so an export hands back the user's own rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from datasel.data.sources import read_data_file
from datasel.errors import ConfigError, DataError
from datasel.instruct.formats import Rendered, render_rows
from datasel.store import atomic_path

log = logging.getLogger(__name__)

ROLES = {"pool": "train", "target": "val", "test": "test"}
IGNORE = -100  # label id that the loss skips (the prompt and the padding)


def read_instructions(path: str | Path, role: str) -> pl.DataFrame:
    """One role's file as read (row order kept), from jsonl / Parquet / csv or a ``save_to_disk`` folder."""
    p = Path(path)
    if not p.exists():
        raise DataError("the instruction data file does not exist", file=p, field=f"instruct.data.{role}",
                        fix="point the path (relative to the run folder) at a jsonl, Parquet or datasets folder")
    if p.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise DataError(f"cannot load as a datasets folder ({type(exc).__name__})", file=p,
                            field=f"instruct.data.{role}", fix="give a folder written by Dataset.save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"a DatasetDict with splits {list(ds)}", file=p, field=f"instruct.data.{role}",
                            fix="save one split (ds['train'].save_to_disk(...)) per role")
        return pl.from_arrow(ds.data.table)
    df = read_data_file(p)
    if df.height == 0:
        raise DataError("the instruction data has no rows", file=p, field=f"instruct.data.{role}",
                        fix="give a file with at least one example")
    return df


def render(df: pl.DataFrame, cfg: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, list[Rendered]]:
    """The file's format (:mod:`datasel.instruct.formats`) and every row rendered into text parts, the parts that
    carry the loss marked."""
    return render_rows(df, cfg, tokenizer, where)


@dataclass
class Encoded:
    """Right-padded token rectangle: ``labels`` hold the trained tokens (replies and their end token), ``IGNORE``
    elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_anchors(tokenizer: Any) -> dict[int, str]:
    """The special added tokens by id (their text): the tokenizer splits the text at them before anything else,
    so what follows one is tokenized the same whatever came before it."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i): t.content for i, t in added.items() if getattr(t, "special", False)}


def tokenize_parts(tokenizer: Any, parts: Sequence[str], trained: Sequence[bool],
                   anchors: dict[int, str] | None = None) -> tuple[list[int], list[bool]]:
    """Token ids of the joined parts and whether each token carries the loss.

    Each part is appended to the text before it and the whole is tokenized again: when the earlier tokens stay as
    they were, the boundary is a token boundary and the ids are exactly the whole text's tokenization (a
    sentencepiece tokenizer adds no stray word-start marker). When appending a part re-merges the last tokens
    before it (a prompt ending in a space, "Answer: " + "3"), the earlier tokens stay as the prompt alone
    tokenizes, as generation sees them, and the part is tokenized on its own: no token ever straddles a prompt and
    a reply, so the loss covers the reply's tokens exactly.

    The text tokenized again starts at the last special token (``anchors``, e.g. a chat template's turn markers),
    checked to tokenize alone as it did in place: a long conversation costs a few passes over its text, not one
    per turn.
    """
    anchors = special_anchors(tokenizer) if anchors is None else anchors
    ids: list[int] = []
    mask: list[bool] = []
    run_text, run_ids = "", []  # the text tokenized again with each part, and its tokens
    for part, train in zip(parts, trained):
        if not part:
            continue
        whole = _ids(tokenizer, run_text + part)
        if whole[:len(run_ids)] == run_ids:
            new, run_text, run_ids = whole[len(run_ids):], run_text + part, whole
        else:
            new = _ids(tokenizer, part)
            run_text, run_ids = part, new
        ids += new
        mask += [bool(train)] * len(new)
        k = next((k for k in range(len(run_ids) - 1, 0, -1) if run_ids[k] in anchors), 0)
        if k:
            at = run_text.rfind(anchors[run_ids[k]])
            if at > 0 and _ids(tokenizer, run_text[at:]) == run_ids[k:]:
                run_text, run_ids = run_text[at:], run_ids[k:]
    return ids, mask


def encode(tokenizer: Any, parts: list[Sequence[str]], trained: list[Sequence[bool]], max_length: int
           ) -> tuple[Encoded, dict[str, Any], list[int], list[int]]:
    """Tokens of each row's parts, cut at ``max_length`` from the right (as LESS's encoder does); returns the
    rectangle, a truncation report, the rows left with no trained token, and each row's trained-token count
    before the cut.

    Padding is to the longest kept row, on the right: real tokens never attend to it (causal attention), so an
    example's loss and gradient do not depend on which rows share its batch.
    """
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    rows, cut, emptied, full = [], 0, [], []
    anchors = special_anchors(tokenizer)
    for i, (p, t) in enumerate(zip(parts, trained)):
        ids, mask = tokenize_parts(tokenizer, p, t, anchors)
        full.append(sum(mask))
        if len(ids) > max_length:
            cut += 1
            ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            emptied.append(i)
        rows.append((ids, mask))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[r, : len(ids)] = row
        attn[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.where(torch.tensor(mask, dtype=torch.bool), row, IGNORE)
    report = {"rows": len(rows), "truncated": cut, "completion_removed": len(emptied), "max_length": max_length,
              "width": width}
    return Encoded(input_ids, attn, labels), report, emptied, full


def example_ids(role: str, rendered: list[Rendered]) -> list[str]:
    """Stable ids from the content (and the row number, so repeated rows stay distinct)."""
    return [f"{role}-{i:06d}-" + hashlib.sha1(json.dumps([r.parts, r.trained]).encode()).hexdigest()[:10]
            for i, r in enumerate(rendered)]


def _tasks(raw: pl.DataFrame, col: str, where: str) -> list[str | None]:
    """The task of each row; None for every row when the file has no task column (never a made-up task)."""
    if not col or col not in raw.columns:
        return [None] * raw.height
    values = raw.get_column(col).to_list()
    nulls = [i for i, v in enumerate(values) if v is None]
    if nulls:
        raise DataError(f"the task column '{col}' is empty in {len(nulls)} row(s) (first: row {nulls[0] + 1})",
                        file=where, field="instruct.data.task_column",
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
                            f"max_length={cfg['max_length']} tokens", file=path, field="instruct.data.max_length",
                            fix="raise instruct.data.max_length or shorten the prompts")
        if emptied:
            log.warning("%s: %d of %d rows lost their whole completion to max_length=%d and are left out",
                        path, len(emptied), len(rendered), cfg["max_length"])
        if rep["truncated"]:
            log.warning("%s: %d of %d rows were cut at max_length=%d tokens", path, rep["truncated"], len(rendered),
                        cfg["max_length"])
        n_comp = (enc.labels != IGNORE).sum(1).tolist()
        frame = pl.DataFrame({
            "example_id": example_ids(role, rendered),
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


def encode_split(table: pl.DataFrame, split: str, tokenizer: Any, max_length: int) -> tuple[list[str], Encoded]:
    """Ids and token rectangle of one split of the examples table, in ``example_id`` order."""
    part = table.filter(pl.col("split") == split).sort("example_id")
    if part.height == 0:
        raise ConfigError(f"split '{split}' has no examples", field="instruct.data",
                          fix="give every role (pool, target, test) at least one row that survives max_length")
    enc, _, _, _ = encode(tokenizer, part.get_column("parts").to_list(), part.get_column("trained").to_list(),
                          max_length)
    return part.get_column("example_id").to_list(), enc
