"""(query, positive, hard negative) triplets: load, mine hard negatives, pick a diverse subset, split.

GAPrune scores weights on two triplet sets, *domain* and *general*. The embedded default mines both from the Python
standard library (:mod:`datasel.data.stdlib_text`); users can point at Parquet / JSONL files or a Hugging Face
dataset with columns ``query, positive`` and optionally ``negative`` (mined when absent).

Paper recipe (Tang & Yang 2025): 5,000 + 5,000 triplets chosen by k-means diversity in embedding space, i.e. k-means
with k = the budget and the point nearest each centroid. Our CPU defaults are smaller (config ``gaprune.data``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datasel.errors import ConfigError, DataError

if TYPE_CHECKING:  # polars and the model are imported lazily: the GPU benchmark path runs without polars
    import polars as pl

    from datasel.models.embedding import EmbeddingModel

log = logging.getLogger(__name__)

TRIPLET_COLUMNS = ("triplet_id", "set", "split", "query", "positive", "negative")


@dataclass
class Triplets:
    """Parallel lists of triplet fields; ``set`` is 'domain' or 'general', ``split`` 'train' or 'eval'."""

    query: list[str]
    positive: list[str]
    negative: list[str]
    triplet_id: list[str] = field(default_factory=list)
    set: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.query)
        if not self.triplet_id:
            self.triplet_id = [triplet_id(q, p) for q, p in zip(self.query, self.positive)]
        self.set = self.set or [""] * n
        self.split = self.split or [""] * n
        for name in ("positive", "negative", "triplet_id", "set", "split"):
            if len(getattr(self, name)) != n:
                raise DataError(f"triplet field '{name}' has {len(getattr(self, name))} rows, 'query' has {n}",
                                field=name)

    def __len__(self) -> int:
        return len(self.query)

    def subset(self, idx: Sequence[int]) -> Triplets:
        return Triplets(*([getattr(self, f)[i] for i in idx] for f in
                          ("query", "positive", "negative", "triplet_id", "set", "split")))

    def where(self, set_: str | None = None, split: str | None = None) -> Triplets:
        idx = [i for i in range(len(self)) if (set_ is None or self.set[i] == set_)
               and (split is None or self.split[i] == split)]
        return self.subset(idx)

    @staticmethod
    def concat(parts: Sequence[Triplets]) -> Triplets:
        return Triplets(*([x for p in parts for x in getattr(p, f)] for f in
                          ("query", "positive", "negative", "triplet_id", "set", "split")))

    def to_records(self) -> list[dict[str, str]]:
        return [{c: getattr(self, c)[i] for c in TRIPLET_COLUMNS} for i in range(len(self))]

    def to_frame(self) -> pl.DataFrame:
        import polars as pl

        return pl.DataFrame({c: getattr(self, c) for c in TRIPLET_COLUMNS}, schema={c: pl.String for c in
                                                                                   TRIPLET_COLUMNS})

    @staticmethod
    def from_records(rows: Sequence[dict[str, Any]], source: str | Path = "<records>") -> Triplets:
        if not rows:
            return Triplets([], [], [])
        missing = [c for c in ("query", "positive", "negative") if c not in rows[0]]
        if missing:
            raise DataError(f"triplets lack column(s) {missing}", file=source, field=missing[0],
                            fix="give every row 'query', 'positive' and 'negative' text")
        cols = {c: [str(r[c]) for r in rows] for c in ("query", "positive", "negative")}
        extra = {c: [str(r[c]) for r in rows] for c in ("triplet_id", "set", "split") if c in rows[0]}
        return Triplets(**cols, **extra)

    @staticmethod
    def from_frame(df: pl.DataFrame, source: str | Path = "<frame>") -> Triplets:
        return Triplets.from_records(df.to_dicts(), source)


def triplet_id(query: str, positive: str) -> str:
    """Stable id from content (not from order), so reruns and other machines agree."""
    return hashlib.blake2b(f"{query}\x1f{positive}".encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Loading pairs or triplets


def load_pairs(spec: dict[str, Any], where: str) -> tuple[list[str], list[str], list[str] | None]:
    """(queries, positives, negatives or None) from a source spec.

    ``{kind: stdlib_code}`` / ``{kind: stdlib_prose}``: the embedded defaults. ``{kind: file, path: x.parquet|.jsonl}``
    and ``{kind: hf, path: <dataset folder or name>, split: train}``: user data with columns ``query``, ``positive``
    and optionally ``negative`` (renamed through ``columns: {query: ..., positive: ..., negative: ...}``).
    """
    kind = spec.get("kind", "stdlib_code")
    if kind in ("stdlib_code", "stdlib_prose"):
        from datasel.data import stdlib_text

        pairs = stdlib_text.mine_function_pairs() if kind == "stdlib_code" else stdlib_text.mine_prose_pairs()
        return [p.query for p in pairs], [p.positive for p in pairs], None
    if kind == "file":
        rows = _read_rows(Path(spec.get("path", "")), where)
    elif kind == "hf":
        rows = _read_hf(spec, where)
    else:
        raise ConfigError(f"unknown triplet source kind '{kind}'", field=f"{where}.kind",
                          fix="use stdlib_code, stdlib_prose, file or hf")
    cols = {"query": "query", "positive": "positive", "negative": "negative", **spec.get("columns", {})}
    src = spec.get("path", where)
    if not rows:
        raise DataError("the triplet source holds no rows", file=src, fix="point at a non-empty file or dataset")
    for need in ("query", "positive"):
        if cols[need] not in rows[0]:
            raise DataError(f"column '{cols[need]}' is missing; columns are {sorted(rows[0])}", file=src,
                            field=cols[need], fix=f"add it or map it with {where}.columns.{need}")
    neg = [str(r[cols["negative"]]) for r in rows] if cols["negative"] in rows[0] else None
    return [str(r[cols["query"]]) for r in rows], [str(r[cols["positive"]]) for r in rows], neg


def _read_rows(path: Path, where: str) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError("triplet file does not exist", file=path, field=f"{where}.path",
                        fix="give a .parquet or .jsonl file with query/positive(/negative) columns")
    if path.suffix == ".parquet":
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                return list(json.loads(text))
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg} at line {exc.lineno})", file=path,
                            fix="write one JSON object per line") from None
    raise DataError(f"unsupported triplet file type '{path.suffix}'", file=path, field=f"{where}.path",
                    fix="use .parquet, .jsonl or .json")


def _read_hf(spec: dict[str, Any], where: str) -> list[dict[str, Any]]:
    import datasets

    path = spec.get("path")
    if path and Path(path).exists():
        ds = datasets.load_from_disk(path)
    else:
        ds = datasets.load_dataset(path, spec.get("name"))
    if isinstance(ds, datasets.DatasetDict):
        split = spec.get("split", "train")
        if split not in ds:
            raise DataError(f"dataset has no split '{split}' (it has {list(ds)})", file=path, field=f"{where}.split")
        ds = ds[split]
    return ds.to_list()


# ---------------------------------------------------------------------------------------------------------------
# Hard negatives and diversity selection


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        return None
    return faiss


def nearest_wrong(query_emb: torch.Tensor, doc_emb: torch.Tensor, positive_idx: Sequence[int],
                  docs: Sequence[str], k: int = 10) -> list[int]:
    """For each query, the highest-scoring document that is not its own positive (nor a copy of it).

    Exact inner-product search (faiss ``IndexFlatIP`` over normalized embeddings = cosine); torch fallback.
    """
    q = np.ascontiguousarray(query_emb.float().numpy())
    d = np.ascontiguousarray(doc_emb.float().numpy())
    k = min(k + 1, d.shape[0])
    faiss = _faiss()
    if faiss is not None:
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(d)
        _, nbrs = index.search(q, k)
    else:
        nbrs = torch.topk(torch.from_numpy(q @ d.T), k, dim=1).indices.numpy()
    out = []
    for i, row in enumerate(nbrs):
        pos = positive_idx[i]
        pick = next((int(j) for j in row if j >= 0 and j != pos and docs[j] != docs[pos]), None)
        if pick is None:  # every neighbour is a copy of the positive: take any other document
            pick = (pos + 1) % len(docs)
        out.append(pick)
    return out


def kmeans_diverse(emb: torch.Tensor, k: int, seed: int = 0, niter: int = 20) -> list[int]:
    """Indices of ``k`` diverse points: k-means (faiss), then the point nearest each centroid, without repeats.

    When two centroids share a nearest point, the later centroid takes its next-nearest unused point.
    """
    n = emb.shape[0]
    if k >= n:
        return list(range(n))
    x = np.ascontiguousarray(emb.float().numpy())
    faiss = _faiss()
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=max(256, n // k + 1))
        km.train(x)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        _, nbrs = index.search(km.centroids, min(n, 32))
    else:  # machines without faiss (a GPU box, say): the same Lloyd iterations in torch
        nbrs = _torch_kmeans_neighbours(torch.from_numpy(x), k, seed, niter, min(n, 32))
    chosen: list[int] = []
    used: set[int] = set()
    for row in nbrs:
        pick = next((int(j) for j in row if j >= 0 and int(j) not in used), None)
        if pick is None:  # all 32 neighbours taken: fall back to the first unused point in index order
            pick = next(i for i in range(n) if i not in used)
        used.add(pick)
        chosen.append(pick)
    return sorted(chosen)


def _torch_kmeans_neighbours(x: torch.Tensor, k: int, seed: int, niter: int, m: int) -> np.ndarray:
    """Lloyd's k-means from a seeded k-means++ start; returns each centroid's ``m`` nearest points."""
    g = torch.Generator().manual_seed(seed)
    # k-means++: each new centre drawn with probability ∝ squared distance to the nearest chosen one, so that
    # well-separated groups each get a centre (plain random starts often put two in one group)
    idx = [int(torch.randint(x.shape[0], (1,), generator=g))]
    d2 = torch.cdist(x, x[idx]).squeeze(1) ** 2
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / len(d2))
        idx.append(int(torch.multinomial(probs, 1, generator=g)))
        d2 = torch.minimum(d2, torch.cdist(x, x[idx[-1:]]).squeeze(1) ** 2)
    cent = x[idx].clone()
    for _ in range(niter):
        assign = torch.cdist(x, cent).argmin(dim=1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        cent = torch.where(counts > 0, sums / counts.clamp(min=1), cent)  # an empty cluster keeps its centroid
    return torch.cdist(cent, x).topk(m, largest=False).indices.numpy()


def build_triplet_set(model: EmbeddingModel, queries: list[str], positives: list[str], negatives: list[str] | None,
                      name: str, n_train: int, n_eval: int, max_candidates: int, seed: int,
                      select: str = "kmeans", encode_batch: int = 64, kmeans_on: str = "query") -> Triplets:
    """Split pairs into a held-out eval part and a train pool, mine hard negatives, pick train by k-means.

    The eval split is drawn first and at random (so it stays an unbiased sample); negatives are mined inside each
    split's own pool, so no eval text reaches the train set as a negative.
    """
    n = len(queries)
    if n < n_eval + 2:
        raise DataError(f"the '{name}' source has {n} pairs, fewer than eval_size + 2 = {n_eval + 2}",
                        field=f"gaprune.data.{name}", fix="lower gaprune.data.eval_size or add data")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    eval_idx = perm[:n_eval]
    pool_idx = perm[n_eval : n_eval + max(max_candidates, n_train)]
    parts = []
    for split, idx in (("eval", eval_idx), ("train", pool_idx)):
        q = [queries[i] for i in idx]
        p = [positives[i] for i in idx]
        q_emb = model.encode(q, encode_batch, desc=f"encode {name}/{split} queries")
        if negatives is None:
            p_emb = model.encode(p, encode_batch, desc=f"encode {name}/{split} positives")
            neg = [p[j] for j in nearest_wrong(q_emb, p_emb, list(range(len(p))), p)]
        else:
            p_emb = None
            neg = [negatives[i] for i in idx]
        keep = list(range(len(idx)))
        if split == "train" and len(idx) > n_train:
            if select == "kmeans":
                if kmeans_on == "query":  # GAPrune's sample.py clusters the query embeddings (text_key: query)
                    feat = q_emb
                elif kmeans_on == "query_positive":
                    if p_emb is None:
                        p_emb = model.encode(p, encode_batch, desc=f"encode {name}/{split} positives")
                    feat = torch.nn.functional.normalize(q_emb + p_emb, dim=-1)
                else:
                    raise ConfigError(f"unknown kmeans_on '{kmeans_on}'", field="gaprune.data.kmeans_on",
                                      fix="use query (GAPrune's code) or query_positive")
                keep = kmeans_diverse(feat, n_train, seed)
            elif select == "random":
                keep = sorted(torch.randperm(len(idx), generator=g)[:n_train].tolist())
            else:
                raise ConfigError(f"unknown selection '{select}'", field="gaprune.data.select",
                                  fix="use kmeans or random")
        parts.append(Triplets([q[i] for i in keep], [p[i] for i in keep], [neg[i] for i in keep],
                              set=[name] * len(keep), split=[split] * len(keep)))
    log.info("%s triplets: %d train (of a pool of %d, %s), %d eval", name, len(parts[1]), len(pool_idx), select,
             len(parts[0]))
    return Triplets.concat(parts)


def build_triplets(data_cfg: dict[str, Any], model: EmbeddingModel, seed: int = 0) -> Triplets:
    """Both sets from ``gaprune.data``: {domain: spec, general: spec, n_train, eval_size, max_candidates, select,
    kmeans_on}."""
    defaults = {"domain": {"kind": "stdlib_code"}, "general": {"kind": "stdlib_prose"}}
    parts = []
    for k, name in enumerate(("domain", "general")):
        spec = data_cfg.get(name, defaults[name])
        q, p, neg = load_pairs(spec, f"gaprune.data.{name}")
        parts.append(build_triplet_set(
            model, q, p, neg, name, int(data_cfg.get("n_train", 256)), int(data_cfg.get("eval_size", 128)),
            int(data_cfg.get("max_candidates", 1024)), seed + k, data_cfg.get("select", "kmeans"),
            int(data_cfg.get("encode_batch", 64)), data_cfg.get("kmeans_on", "query"),
        ))
    return Triplets.concat(parts)


def read_triplets(path: str | Path) -> Triplets:
    """Triplets written by the gaprune data rule (Parquet) or a JSONL export of them."""
    path = Path(path)
    return Triplets.from_records(_read_rows(path, "triplets"), path)


def write_triplets(triplets: Triplets, path: str | Path) -> Path:
    """Parquet through the store's atomic write; ``.jsonl`` for carrying to machines without polars."""
    from datasel.store import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(r) + "\n" for r in triplets.to_records()), encoding="utf-8")
        else:
            triplets.to_frame().write_parquet(tmp)
    return path
