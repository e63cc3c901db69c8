"""A mixing task: the generic pool split into domains, the small specific set, and its held-out evaluation split.

Built from any examples table (vector ``x`` or ``text`` rows) with a domain column, or with domains made by
k-means (:mod:`datasel.mixing.clusters`). Vector rows are read through the vector task, so a user's features are
standardized with the training split's statistics as in every other stage. Classification and character-level language modelling share one loss,
token-level cross-entropy, so the trainer, the alignment and the scores need no branch on the data kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from datasel.errors import ConfigError, DataError

log = logging.getLogger(__name__)
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: the padded targets of tokenized text


def token_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for class logits (B, C) vs (B,) or LM logits (B, T, V) vs (B, T); targets -100 (padding
    of tokenized text) are left out."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def training_loss(model_cfg: dict[str, Any] | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a mixture trains with: :func:`token_ce`, or for a pretrained causal LM (``model.name: causal_lm``)
    the causal-LM task's per-example completion loss (:func:`datasel.tasks.causal_lm.shifted_loss`), the loss of
    every other LM trainer."""
    if (model_cfg or {}).get("name") == "causal_lm":
        from datasel.tasks.causal_lm import shifted_loss

        return shifted_loss
    return token_ce


@dataclass
class MixingTask:
    """Tensors per generic domain, the specific set (aligned to) and its evaluation split (measured on)."""

    domains: list[str]
    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    ids: list[list[str]]
    spe_x: torch.Tensor
    spe_y: torch.Tensor
    spe_ids: list[str]
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    meta: dict[str, Any]
    specific: str
    embeddings: list[np.ndarray] | None = field(default=None, repr=False)
    spe_embeddings: np.ndarray | None = field(default=None, repr=False)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(y) for y in self.ys], dtype=np.float64)

    def to(self, device: torch.device) -> MixingTask:
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        self.xs, self.ys = move(self.xs), move(self.ys)
        self.spe_x, self.spe_y = self.spe_x.to(device), self.spe_y.to(device)
        self.eval_x, self.eval_y = self.eval_x.to(device), self.eval_y.to(device)
        return self


RowEncoder = Callable[[pl.DataFrame], tuple[torch.Tensor, torch.Tensor]]


def row_encoder(examples: pl.DataFrame, meta: dict[str, Any], encoder: Any = None,
                model_cfg: dict[str, Any] | None = None, where: str = "dga.model") -> RowEncoder:
    """How rows of ``examples`` become (inputs, targets), the same for every domain and role.

    Vector rows go through the vector task (:class:`datasel.tasks.vector.VectorTask`): the features as every other
    stage sees them, standardized with the training split's mean and std when the meta says ``standardize`` (a
    user's data). Text rows are next-token targets: characters over ``meta['vocab']``, or through ``encoder`` (a
    causal LM's tokenizer, :class:`datasel.models.lm.LMTextEncoder`) when given.
    """
    if meta.get("kind") == "text":
        return lambda df: _text_rows(df, meta, encoder)
    from datasel.tasks import make_task

    task = make_task(examples, {**meta, "kind": "vector"}, model_cfg or {}, where)

    def vector_rows(df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        rows = task.rows(df)
        return rows.inputs, rows.labels  # type: ignore[return-value]

    return vector_rows


def _text_rows(df: pl.DataFrame, meta: dict[str, Any], encoder: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    if encoder is not None:
        return encoder.encode(df.get_column("text").to_list())
    vocab = meta.get("vocab")
    if not vocab:
        raise DataError("text data needs meta['vocab']", field="vocab", fix="build the data with a vocabulary")
    lut = {c: i for i, c in enumerate(vocab)}
    unk = lut.get("?", 0)
    texts = df.get_column("text").to_list()
    lengths = {len(t) for t in texts}
    if len(lengths) > 1:
        raise DataError(f"text rows have different lengths {sorted(lengths)[:5]}", field="text",
                        fix="cut the text into fixed-length chunks (block_size + 1 characters)")
    idx = torch.tensor([[lut.get(c, unk) for c in t] for t in texts], dtype=torch.long).reshape(len(texts), -1)
    return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()


def split_roles(examples: pl.DataFrame, meta: dict[str, Any], cfg: dict[str, Any], source: str = "examples",
                need_column: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, str]:
    """(generic pool, specific train rows, specific evaluation rows, domain column name).

    The specific set is either the rows whose domain column equals ``specific`` (train rows to align to, ``eval_split``
    rows to measure), or — for data without domain labels — a whole split: ``specific_split: val`` aligns to the
    validation split and measures on ``eval_split``, with every train row in the pool (domains then from k-means).
    """
    col = cfg.get("domain_column", "domain")
    eval_split = cfg.get("eval_split", "test")
    if cfg.get("specific_split"):
        sp = cfg["specific_split"]
        spe_train = examples.filter(pl.col("split") == sp)
        spe_eval = examples.filter(pl.col("split") == eval_split)
        pool = examples.filter(pl.col("split") == "train")
        if spe_train.height == 0:
            raise DataError(f"the specific set (split '{sp}') is empty", file=source, field="dga.task.specific_split",
                            fix=f"use a split that has rows: {examples['split'].unique().sort().to_list()}")
        if spe_eval.height == 0 or sp == eval_split:
            raise DataError(f"no held-out '{eval_split}' rows distinct from the specific split '{sp}'", file=source,
                            field="dga.task.eval_split", fix="measure on another split than the one aligned to")
        if need_column and col not in pool.columns:
            raise DataError(f"the examples table has no domain column '{col}'", file=source, field=col,
                            fix="add a domain column, set dga.task.domain_column, or use dga.domains.method: kmeans")
        return pool.sort("example_id"), spe_train.sort("example_id"), spe_eval.sort("example_id"), col
    specific = cfg.get("specific") or meta.get("specific")
    if col not in examples.columns:
        raise DataError(f"the examples table has no domain column '{col}' to find the specific set in", file=source,
                        field=col, fix="add a domain column, set dga.task.domain_column, or mark the specific set "
                        "by split with dga.task.specific_split (then dga.domains.method: kmeans)")
    if not specific:
        raise ConfigError("no specific (target) set named", field="dga.task.specific",
                          fix="name the domain-column value that marks the specific set")
    spe_rows = examples.filter(pl.col(col) == specific)
    if spe_rows.height == 0:
        raise DataError(f"the specific set '{specific}' is missing: no row has {col} == '{specific}'", file=source,
                        field="dga.task.specific", fix=f"use one of {examples[col].unique().sort().to_list()[:10]}")
    spe_train = spe_rows.filter(pl.col("split") == "train")
    if spe_train.height == 0:
        raise DataError(f"the specific set '{specific}' has no train rows to align to", file=source, field="split",
                        fix="give the specific domain a few split == 'train' rows")
    spe_eval = spe_rows.filter(pl.col("split") == eval_split)
    if spe_eval.height == 0:
        spe_eval = spe_rows.filter(pl.col("split") == "val")
    if spe_eval.height == 0:
        raise DataError(f"the specific set '{specific}' has no '{eval_split}' or 'val' rows to measure the loss on",
                        file=source, field="split", fix="hold out some specific-domain rows as test")
    pool = examples.filter((pl.col(col) != specific) & (pl.col("split") == "train")).sort("example_id")
    return pool, spe_train.sort("example_id"), spe_eval.sort("example_id"), col


def build_task(examples: pl.DataFrame, meta: dict[str, Any], cfg: dict[str, Any], source: str = "examples",
               domain_labels: np.ndarray | None = None, encoder: Any = None,
               rows: RowEncoder | None = None) -> MixingTask:
    """Split ``examples`` into generic domains, the specific set and its evaluation split.

    cfg (``dga.task``): ``domain_column`` (default ``domain``), ``specific`` (the specific domain's value; default
    ``meta['specific']``) or ``specific_split``, ``eval_split`` (default ``test``; falls back to ``val``).
    ``domain_labels`` overrides the column for the generic pool (k-means clusters), in the pool's row order.
    ``encoder`` tokenizes text rows for a pretrained LM (:func:`datasel.models.lm.text_encoder`); ``rows`` is the
    row encoder (default :func:`row_encoder` of ``examples``).
    """
    rows = rows or row_encoder(examples, meta, encoder)
    pool, spe_train, spe_eval, col = split_roles(examples, meta, cfg, source, need_column=domain_labels is None)
    specific = cfg.get("specific") or meta.get("specific") or f"split:{cfg.get('specific_split')}"
    if domain_labels is not None:
        if len(domain_labels) != pool.height:
            raise DataError("domain labels do not match the generic pool", field="domain")
        pool = pool.with_columns(pl.Series(col, [str(d) for d in domain_labels]))
    names = sorted(pool.get_column(col).drop_nulls().unique().to_list())
    if not names:
        raise DataError("the generic pool has no domains (no train rows outside the specific set)", file=source,
                        field=col, fix="add generic train rows with a domain, or cluster them with k-means")
    from datasel.mixing.clusters import row_embeddings

    xs, ys, ids, embs = [], [], [], []
    for name in names:
        part = pool.filter(pl.col(col) == name)
        x, y = rows(part)
        xs.append(x)
        ys.append(y)
        ids.append(part.get_column("example_id").to_list())
        embs.append(row_embeddings(part, meta, cfg, rows))
    if pool.get_column(col).null_count():
        raise DataError(f"{pool.get_column(col).null_count()} generic rows have no domain", file=source, field=col,
                        fix="fill the domain column or cluster with k-means")
    sx, sy = rows(spe_train)
    ex, ey = rows(spe_eval)
    log.info("mixing task: %d domains (%d pool rows), specific '%s': %d train / %d eval",
             len(names), pool.height, specific, len(sy), len(ey))
    return MixingTask(names, xs, ys, ids, sx, sy, spe_train.get_column("example_id").to_list(), ex, ey, dict(meta),
                      str(specific), embs, row_embeddings(spe_train, meta, cfg, rows))


def check_domains(task: MixingTask, where: str = "dga.domains") -> None:
    """Refuse a task with no domains or an empty one (a weight on an empty domain could never be sampled)."""
    if not task.domains:
        raise DataError("no domains in the generic pool", field=where, fix="give the pool a domain column")
    empty = [d for d, y in zip(task.domains, task.ys) if len(y) == 0]
    if empty:
        raise DataError(f"domain(s) {empty} have no examples", field=where, fix="drop them or lower k")
