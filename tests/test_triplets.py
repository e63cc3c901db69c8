"""Triplet mining from the standard library, hard negatives, k-means diversity, loaders."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from datasel.data import stdlib_text
from datasel.data.triplets import (
    Triplets,
    build_triplet_set,
    kmeans_diverse,
    load_pairs,
    nearest_wrong,
    read_triplets,
    write_triplets,
)
from datasel.errors import ConfigError, DataError
from datasel.models.embedding import tiny_random_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def code_pairs():
    return stdlib_text.mine_function_pairs()


def test_function_pairs_are_real_and_leak_free(code_pairs):
    assert len(code_pairs) > 1000  # CPython ships thousands of documented functions
    by_origin = {p.origin: p for p in code_pairs}
    p = by_origin["json:dumps"]
    assert p.query.startswith("Serialize ``obj`` to a JSON formatted ``str``")
    assert p.positive.startswith("def dumps(")
    for p in code_pairs[::50]:
        assert p.positive.lstrip().startswith(("def ", "async def ", "@"))
        assert p.query not in p.positive  # the docstring was cut out of the positive
    assert len({p.positive for p in code_pairs}) == len(code_pairs)


def test_prose_pairs_are_natural_language():
    pairs = stdlib_text.mine_prose_pairs()
    assert len(pairs) > 500
    assert any(p.origin.startswith("reference:") for p in pairs)
    for p in pairs[::40]:
        assert p.query[-1] in ".!?" and len(p.positive) >= 80
        assert ">>>" not in p.positive and "::=" not in p.positive


def test_nearest_wrong_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    docs = [f"doc{i}" for i in range(20)]
    got = nearest_wrong(q, d, list(range(20)), docs)
    sims = q @ d.T
    for i in range(20):
        s = sims[i].clone()
        s[i] = -float("inf")
        assert got[i] == int(s.argmax())


def test_nearest_wrong_skips_copies_of_the_positive():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    assert nearest_wrong(q, d, [0], ["same", "same", "other"]) == [2]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_diverse_takes_one_point_per_cluster(backend, monkeypatch):
    if backend == "torch":  # the fallback used where faiss is not installed
        monkeypatch.setattr("datasel.data.triplets._faiss", lambda: None)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 8)) * 20
    pts = np.concatenate([c + rng.normal(size=(30, 8)) for c in centers]).astype(np.float32)
    chosen = kmeans_diverse(torch.from_numpy(pts), 5, seed=0)
    assert len(set(chosen)) == 5
    assert sorted(i // 30 for i in chosen) == [0, 1, 2, 3, 4]  # one representative from every cluster
    assert chosen == kmeans_diverse(torch.from_numpy(pts), 5, seed=0)  # seeded
    assert kmeans_diverse(torch.from_numpy(pts), 500) == list(range(150))


def test_loaders_and_errors(tmp_path):
    rows = [{"q": f"question {i}", "p": f"answer {i}", "negative": f"wrong {i}"} for i in range(4)]
    jl = tmp_path / "t.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    q, p, n = load_pairs({"kind": "file", "path": str(jl), "columns": {"query": "q", "positive": "p"}}, "x")
    assert q[2] == "question 2" and p[2] == "answer 2" and n[2] == "wrong 2"
    pq = tmp_path / "t.parquet"
    pl.DataFrame(rows).rename({"q": "query", "p": "positive"}).drop("negative").write_parquet(pq)
    q, p, n = load_pairs({"kind": "file", "path": str(pq)}, "x")
    assert n is None and len(q) == 4
    import datasets

    datasets.Dataset.from_list([{"query": "a", "positive": "b"}]).save_to_disk(str(tmp_path / "hf"))
    q, p, n = load_pairs({"kind": "hf", "path": str(tmp_path / "hf")}, "x")
    assert (q, p, n) == (["a"], ["b"], None)
    with pytest.raises(DataError, match="column 'q'"):
        load_pairs({"kind": "file", "path": str(pq), "columns": {"query": "q"}}, "gaprune.data.domain")
    with pytest.raises(DataError, match="does not exist"):
        load_pairs({"kind": "file", "path": str(tmp_path / "missing.jsonl")}, "x")


def test_build_triplet_set_splits_are_disjoint_and_negatives_wrong(code_pairs, tmp_path):
    model = tiny_random_model(32)
    sub = code_pairs[:120]
    t = build_triplet_set(model, [p.query for p in sub], [p.positive for p in sub], None, "domain",
                          n_train=20, n_eval=30, max_candidates=60, seed=3)
    tr, ev = t.where("domain", "train"), t.where("domain", "eval")
    assert len(tr) == 20 and len(ev) == 30
    assert not set(tr.query) & set(ev.query)
    assert all(n != p for n, p in zip(t.negative, t.positive))
    assert set(tr.negative) <= set(p.positive for p in sub) - set(ev.positive)  # no eval text leaks into train
    # round trip through Parquet and JSONL
    for name in ("t.parquet", "t.jsonl"):
        back = read_triplets(write_triplets(t, tmp_path / name))
        assert back.to_records() == t.to_records()
    with pytest.raises(DataError, match="eval_size"):
        build_triplet_set(model, ["a"] * 3, ["b"] * 3, None, "domain", 2, 5, 10, 0)


def test_triplets_reject_ragged_fields():
    with pytest.raises(DataError, match="negative"):
        Triplets(["a", "b"], ["c", "d"], ["e"])


@pytest.mark.parametrize("on", ["query", "query_positive"])
def test_kmeans_runs_on_query_embeddings_by_default(on, monkeypatch):
    """GAPrune's sample.py clusters the query embeddings; normalize(q + p) is kept as an option."""
    import datasel.data.triplets as tmod

    model = tiny_random_model(32)
    qs = [f"query number {i} about topic {i % 4}" for i in range(30)]
    ps = [f"answer {i} text {i % 3}" for i in range(30)]
    negs = [f"negative {i}" for i in range(30)]
    seen: list[torch.Tensor] = []
    orig = tmod.kmeans_diverse
    monkeypatch.setattr(tmod, "kmeans_diverse", lambda emb, k, seed=0: seen.append(emb) or orig(emb, k, seed))
    kw = {} if on == "query" else {"kmeans_on": on}
    t = build_triplet_set(model, qs, ps, negs, "domain", n_train=6, n_eval=5, max_candidates=20, seed=1, **kw)
    assert len(t.where("domain", "train")) == 6 and len(seen) == 1
    pool = torch.randperm(30, generator=torch.Generator().manual_seed(1)).tolist()[5:25]
    q_ref = torch.stack([model.encode([qs[i]])[0] for i in pool])  # one text at a time: an independent encoding
    if on == "query":
        ref = q_ref
    else:
        p_ref = torch.stack([model.encode([ps[i]])[0] for i in pool])
        ref = torch.nn.functional.normalize(q_ref + p_ref, dim=-1)
    torch.testing.assert_close(seen[0], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="kmeans_on"):
        build_triplet_set(model, qs, ps, negs, "domain", 6, 5, 20, 1, kmeans_on="negative")
