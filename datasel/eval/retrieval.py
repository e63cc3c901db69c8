"""Dense retrieval evaluation: nDCG@k, MRR@k and recall@k, as MTEB reports them for retrieval tasks.

Each query has a set of relevant document indices (binary relevance). Documents are ranked by cosine similarity of
normalized embeddings (exact search), ties broken by document index so that the ranking is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from datasel.errors import DataError

if TYPE_CHECKING:
    from datasel.models.embedding import EmbeddingModel


def rank_documents(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Top-``k`` document indices per query by cosine similarity, (Q, k), chunked over queries."""
    q = torch.nn.functional.normalize(query_emb.float(), dim=-1)
    d = torch.nn.functional.normalize(doc_emb.float(), dim=-1)
    k = min(k, d.shape[0])
    out = []
    for s in range(0, q.shape[0], chunk):
        sims = q[s : s + chunk] @ d.T
        # stable sort: equal scores keep index order, so the result does not depend on the BLAS in use
        out.append(torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k])
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


def retrieval_metrics(ranked: torch.Tensor | Sequence[Sequence[int]], relevant: Sequence[set[int]],
                      k: int = 10) -> dict[str, float]:
    """Mean nDCG@k, MRR@k and recall@k over queries with binary relevance.

    nDCG@k = DCG/IDCG with DCG = Σ_{r≤k} rel_r / log2(r + 1); MRR@k = 1/rank of the first relevant document within
    the top k (0 when none); recall@k = |relevant ∩ top k| / |relevant|.
    """
    ranked = ranked.tolist() if isinstance(ranked, torch.Tensor) else [list(r) for r in ranked]
    if len(ranked) != len(relevant):
        raise DataError(f"{len(ranked)} rankings for {len(relevant)} relevance sets", field="relevant")
    if not ranked:
        raise DataError("no queries to evaluate", field="queries", fix="give the eval split at least one query")
    ndcg = mrr = recall = 0.0
    for row, rel in zip(ranked, relevant):
        if not rel:
            raise DataError("a query has no relevant document", field="relevant",
                            fix="drop queries without a positive from the eval split")
        top = row[:k]
        dcg = sum(1.0 / math.log2(r + 2) for r, doc in enumerate(top) if doc in rel)
        idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(rel))))
        ndcg += dcg / idcg
        first = next((r for r, doc in enumerate(top) if doc in rel), None)
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        recall += sum(1 for doc in top if doc in rel) / len(rel)
    n = len(ranked)
    return {f"ndcg@{k}": ndcg / n, f"mrr@{k}": mrr / n, f"recall@{k}": recall / n}


def corpus_from_triplets(queries: Sequence[str], positives: Sequence[str],
                         negatives: Sequence[str]) -> tuple[list[str], list[str], list[set[int]]]:
    """An eval task from held-out triplets: the corpus is every distinct positive and hard negative.

    Returns (queries, corpus, relevant) where relevant[i] holds the corpus indices equal to query i's positive.
    """
    corpus: list[str] = []
    where: dict[str, int] = {}
    for text in [*positives, *negatives]:
        if text not in where:
            where[text] = len(corpus)
            corpus.append(text)
    return list(queries), corpus, [{where[p]} for p in positives]


def evaluate_retrieval(model: EmbeddingModel, queries: Sequence[str], corpus: Sequence[str], relevant: Sequence[set[int]],
                       k: int = 10, batch_size: int = 64) -> dict[str, float]:
    """Encode queries and corpus with ``model`` (an :class:`~datasel.models.embedding.EmbeddingModel`) and score."""
    q = model.encode(list(queries), batch_size, desc="encode eval queries")
    d = model.encode(list(corpus), batch_size, desc="encode eval corpus")
    return retrieval_metrics(rank_documents(q, d, k), relevant, k)
