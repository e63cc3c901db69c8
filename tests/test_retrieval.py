"""Retrieval metrics against hand-computed values and a brute-force ranking reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasel.errors import DataError
from datasel.eval.retrieval import corpus_from_triplets, rank_documents, retrieval_metrics

torch.set_num_threads(1)


def test_known_values_single_relevant():
    # query 0: relevant at rank 1; query 1: at rank 3; query 2: not in the top 10
    ranked = [[5, 1, 2], [0, 1, 7], [1, 2, 3]]
    m = retrieval_metrics(ranked, [{5}, {7}, {9}], k=10)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)


def test_known_values_multi_relevant_and_cutoff():
    # two relevant docs at ranks 2 and 4, k = 3: only rank 2 counts; IDCG over min(k, |rel|) = 2 positions
    m = retrieval_metrics([[0, 1, 2, 3]], [{1, 3}], k=3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["mrr@3"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(0.5)


def test_perfect_ranking_scores_one():
    emb = torch.eye(6)
    ranked = rank_documents(emb, emb, k=10)
    assert ranked[:, 0].tolist() == list(range(6))
    assert retrieval_metrics(ranked, [{i} for i in range(6)], 10) == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@10": 1.0}


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(2, 30), st.integers(0, 10_000))
def test_rank_documents_matches_bruteforce(nq, nd, seed):
    g = torch.Generator().manual_seed(seed)
    q, d = torch.randn(nq, 8, generator=g), torch.randn(nd, 8, generator=g)
    ranked = rank_documents(q, d, k=5, chunk=3)
    qn, dn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
    for i in range(nq):
        sims = (qn[i] @ dn.T).tolist()
        ref = sorted(range(nd), key=lambda j: (-sims[j], j))[: min(5, nd)]
        got = ranked[i].tolist()
        # equal up to float near-ties: compare the similarity values in ranked order
        assert [round(sims[j], 5) for j in got] == [round(sims[j], 5) for j in ref]


def test_ties_broken_by_index():
    q = torch.ones(1, 2)
    d = torch.ones(4, 2)
    assert rank_documents(q, d, 4)[0].tolist() == [0, 1, 2, 3]


def test_corpus_from_triplets_dedups_and_maps_positives():
    q, corpus, rel = corpus_from_triplets(["a", "b"], ["P1", "P2"], ["P2", "N"])
    assert corpus == ["P1", "P2", "N"]
    assert rel == [{0}, {1}]
    assert q == ["a", "b"]


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="relevant"):
        retrieval_metrics([[0]], [set()])
    with pytest.raises(DataError):
        retrieval_metrics([[0], [1]], [{0}])
