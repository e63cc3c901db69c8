"""Instruction data: prompt + completion columns, or chat ``messages``; tokenized with the loss on completions only.

Three files play three roles: the *pool* (candidates for selection, split ``train``), the *target* set (a few dozen
examples of the task one wants to get better at, split ``val``: LESS's validation set) and a held-out *test* set of
the same task (split ``test``: evaluation only). Each is jsonl / Parquet / csv or a ``datasets`` ``save_to_disk``
folder. A ``task`` column is optional: LESS averages over each target task and takes the best task.

Examples keep their original columns (``source_<role>.parquet``), so an export hands back the user's own rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from datasel.data.sources import read_data_file
from datasel.errors import ConfigError, DataError

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


def render(df: pl.DataFrame, cfg: dict[str, Any], tokenizer: Any, where: str) -> tuple[list[str], list[str]]:
    """(prompt, completion) texts of every row: the named columns, or chat ``messages`` whose last turn is the
    assistant's answer (rendered with the tokenizer's chat template when it has one)."""
    pc, cc, mc = cfg["prompt_column"], cfg["completion_column"], cfg["messages_column"]
    if pc in df.columns and cc in df.columns:
        return [str(x) for x in df.get_column(pc).to_list()], [str(x) for x in df.get_column(cc).to_list()]
    if mc in df.columns:
        prompts, comps = [], []
        for i, msgs in enumerate(df.get_column(mc).to_list()):
            if not msgs or msgs[-1].get("role") != "assistant":
                raise DataError(f"row {i}: the last message is not the assistant's answer", file=where, field=mc,
                                fix="end every conversation with a {'role': 'assistant', 'content': ...} turn")
            prompts.append(_chat_prompt(msgs[:-1], tokenizer))
            comps.append(str(msgs[-1]["content"]))
        return prompts, comps
    missing = cc if pc in df.columns else pc
    raise DataError(f"no '{missing}' column (columns: {', '.join(df.columns)})", file=where,
                    field=f"instruct.data.{'completion' if missing == cc else 'prompt'}_column",
                    fix=f"name your columns in instruct.data.prompt_column / completion_column, or give chat "
                        f"'{mc}' (a list of role/content turns ending with the assistant's)")


def _chat_prompt(msgs: list[dict[str, Any]], tokenizer: Any) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    # no template: a plain transcript, the assistant's turn opened for the completion
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: "


@dataclass
class Encoded:
    """Right-padded token rectangle: ``labels`` hold the completion tokens (+ end token), ``IGNORE`` elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def encode(tokenizer: Any, prompts: list[str], completions: list[str], max_length: int
           ) -> tuple[Encoded, dict[str, Any], list[int]]:
    """Tokens of prompt + completion + end token, cut at ``max_length`` from the right (as LESS's encoder does);
    returns the rectangle, a truncation report and the rows whose completion was cut away entirely.

    Padding is to the longest kept row, on the right: real tokens never attend to it (causal attention), so an
    example's loss and gradient do not depend on which rows share its batch.
    """
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    rows, cut, emptied = [], 0, []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        pi = list(tokenizer(p, add_special_tokens=False)["input_ids"])
        ci = list(tokenizer(c, add_special_tokens=False)["input_ids"]) + [eos]
        ids = (pi + ci)[:max_length]
        if len(pi) + len(ci) > max_length:
            cut += 1
        n_comp = max(0, len(ids) - len(pi))
        if n_comp == 0:
            emptied.append(i)
        rows.append((ids, len(pi)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attn[r, : len(ids)] = 1
        labels[r, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
    report = {"rows": len(rows), "truncated": cut, "completion_removed": len(emptied), "max_length": max_length,
              "width": width}
    return Encoded(input_ids, attn, labels), report, emptied


def example_ids(role: str, prompts: list[str], completions: list[str]) -> list[str]:
    """Stable ids from the content (and the row number, so repeated rows stay distinct)."""
    return [f"{role}-{i:06d}-" + hashlib.sha1(f"{p}\x00{c}".encode()).hexdigest()[:10]
            for i, (p, c) in enumerate(zip(prompts, completions))]


def prepare_examples(cfg: dict[str, Any], tokenizer: Any, out_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The instruction examples table (every role) and the truncation report; original rows go to
    ``out_dir/source_<role>.parquet``. Rows whose completion was cut away entirely are dropped and counted; a role
    left with no row is refused."""
    frames, report = [], {}
    for role, split in ROLES.items():
        path = cfg[role]
        raw = read_instructions(path, role)
        prompts, comps = render(raw, cfg, tokenizer, str(path))
        enc, rep, dropped = encode(tokenizer, prompts, comps, int(cfg["max_length"]))
        emptied = set(dropped)
        if len(emptied) == len(prompts):
            raise DataError(f"every completion was truncated away: all {len(prompts)} prompts are at least "
                            f"max_length={cfg['max_length']} tokens", file=path, field="instruct.data.max_length",
                            fix="raise instruct.data.max_length or shorten the prompts")
        if emptied:
            log.warning("%s: %d of %d rows lost their whole completion to max_length=%d and are left out",
                        path, len(emptied), len(prompts), cfg["max_length"])
        if rep["truncated"]:
            log.warning("%s: %d of %d rows were cut at max_length=%d tokens", path, rep["truncated"], len(prompts),
                        cfg["max_length"])
        task_col = cfg["task_column"]
        tasks = ([str(t) for t in raw.get_column(task_col).to_list()] if task_col in raw.columns
                 else [""] * raw.height)
        n_comp = (enc.labels != IGNORE).sum(1).tolist()
        frame = pl.DataFrame({
            "example_id": example_ids(role, prompts, comps),
            "split": [split] * raw.height,
            "source_row": list(range(raw.height)),
            "task": tasks,
            "prompt": prompts,
            "completion": comps,
            "completion_tokens": n_comp,
            "truncated": _cut_rows(n_comp, tokenizer, comps),
        })
        frames.append(frame.filter(~pl.int_range(pl.len()).is_in(sorted(emptied))))
        report[role] = {**rep, "file": str(path)}
        out_dir.mkdir(parents=True, exist_ok=True)
        raw.write_parquet(out_dir / f"source_{role}.parquet")
    table = pl.concat(frames)
    tasks = sorted(set(table.get_column("task")))
    table = table.with_columns(pl.col("task").replace_strict({t: k for k, t in enumerate(tasks)},
                                                             return_dtype=pl.Int64).alias("label"))
    return table, report


def _cut_rows(n_comp: list[int], tokenizer: Any, comps: list[str]) -> list[bool]:
    # a row is cut when fewer completion tokens survived than its completion (+ end token) has
    return [n < len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for n, c in zip(n_comp, comps)]


def encode_split(table: pl.DataFrame, split: str, tokenizer: Any, max_length: int) -> tuple[list[str], Encoded]:
    """Ids and token rectangle of one split of the examples table, in ``example_id`` order."""
    part = table.filter(pl.col("split") == split).sort("example_id")
    if part.height == 0:
        raise ConfigError(f"split '{split}' has no examples", field="instruct.data",
                          fix="give every role (pool, target, test) at least one row that survives max_length")
    enc, _, _ = encode(tokenizer, part.get_column("prompt").to_list(), part.get_column("completion").to_list(),
                       max_length)
    return part.get_column("example_id").to_list(), enc
