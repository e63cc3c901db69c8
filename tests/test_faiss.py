"""faiss-backed uses of gradient features: target alignment (LESS), near-duplicate removal, diversity selection."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from datasel.errors import ConfigError, DataError
from datasel.features.index import build_index, search, unit_rows
from datasel.features.store import ShardWriter, gather
from datasel.scoring import SCORERS, ScoreInputs
from datasel.selection import POLICIES
from datasel.selection.dedup import dedup_order
from datasel.selection.diversity import kcenter_greedy, kmeans_coverage

os.environ.setdefault("DATASEL_PROGRESS", "0")


def _write_set(root: Path, name: str, x: np.ndarray, ids: list[str], split: str, checkpoint: str,
               lr: float | None = None, seed: int = 0, shards: int = 2, **extra: Any) -> Path:
    dirs = []
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    for i in range(shards):
        s, e = bounds[i], bounds[i + 1]
        meta = {"dim": x.shape[1], "seed": seed, "split": split, "checkpoint": checkpoint, "lr": lr, **extra}
        w = ShardWriter(root / name / f"shard_{i}", meta, ids[s:e], e - s)
        w.write(0, x[s:e])
        w.finalize()
        dirs.append(root / name / f"shard_{i}")
    return gather(dirs, root / name / "index.json")


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_target_alignment_matches_brute_force(tmp_path: Path, reduce: str) -> None:
    rng = np.random.default_rng(0)
    ids = [f"t{i:03d}" for i in range(60)]
    paths, want = [], np.zeros(60)
    for c, lr in [("seed0/epoch2.pt", 0.1), ("seed0/epoch4.pt", 0.02)]:
        tr = rng.standard_normal((60, 16)).astype(np.float32)
        va = rng.standard_normal((9, 16)).astype(np.float32)
        paths.append(_write_set(tmp_path, f"{c[:12]}-train".replace("/", "_"), tr, ids, "train", c, lr))
        paths.append(_write_set(tmp_path, f"{c[:12]}-val".replace("/", "_"), va, [f"v{i}" for i in range(9)], "val",
                                c, lr, shards=1))
        a, b = _f16(tr), _f16(va)
        cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
        want += lr * (cos.mean(1) if reduce == "mean" else cos.max(1))
    scorer = SCORERS.get("target_alignment")({"reduce": reduce})
    df = scorer.score(ScoreInputs(examples=tmp_path / "unused", meta={}, features=paths))
    assert df.get_column("example_id").to_list() == ids
    np.testing.assert_allclose(df.get_column("score").to_numpy(), want, rtol=1e-5, atol=1e-6)


def test_target_alignment_refuses_missing_target(tmp_path: Path) -> None:
    x = np.ones((4, 3), np.float32)
    p = _write_set(tmp_path, "tr", x, list("abcd"), "train", "c", shards=1)
    with pytest.raises(DataError, match="needs train and val"):
        SCORERS.get("target_alignment")({}).score(ScoreInputs(examples=tmp_path, meta={}, features=[p]))
    with pytest.raises(DataError, match="no gradient features"):
        SCORERS.get("target_alignment")({}).score(ScoreInputs(examples=tmp_path, meta={}, features=[]))


def test_ivf_index_finds_exact_neighbours_mostly() -> None:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((20, 32))
    x = unit_rows(centers[rng.integers(0, 20, 4000)] + 0.1 * rng.standard_normal((4000, 32)))
    q = x[:200]
    flat_d, flat_i = search(build_index(x, {"kind": "flat"}), q, 1)
    ivf_d, ivf_i = search(build_index(x, {"kind": "ivf", "nprobe": 8}, seed=0), q, 1)
    assert (flat_i[:, 0] == np.arange(200)).all()  # exact search finds the query itself
    assert (ivf_i[:, 0] == np.arange(200)).mean() > 0.95
    with pytest.raises(ConfigError):
        build_index(x, {"kind": "hnsw"})


def _dedup_reference(x: np.ndarray, threshold: float) -> list[int]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept: list[int] = []
    for i in range(len(u)):
        if all(u[i] @ u[j] <= threshold for j in kept):
            kept.append(i)
    return kept


def test_dedup_matches_reference_and_removes_planted_duplicates() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((50, 24)).astype(np.float32)
    dups = base[:20] * 1.5 + 0.01 * rng.standard_normal((20, 24)).astype(np.float32)  # scaled near-copies
    x = np.concatenate([base, dups])
    kept = dedup_order(x, 0.95)
    assert kept == _dedup_reference(x, 0.95)
    assert kept == list(range(50))  # every planted copy (rows 50..69) is dropped, every original kept
    assert dedup_order(x, 0.95, limit=10) == list(range(10))


def test_dedup_policy_keeps_best_ranked_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((10, 8)).astype(np.float32)
    x = np.concatenate([base, base[:3] * 2])
    ids = [f"e{i:02d}" for i in range(13)]
    index = _write_set(tmp_path, "f", x, ids, "train", "c")
    # pool in rank order: the copies e10..e12 rank first, so they survive and the originals e00..e02 go
    order = ids[10:] + ids[:10]
    pool = pl.DataFrame({"example_id": order, "label": [0] * 13, "rank": list(range(1, 14))})
    out = POLICIES.get("dedup")({"features": str(index), "threshold": 0.99}).choose(pool, 13, seed=0)
    assert sorted(out.get_column("example_id").to_list()) == sorted(ids[3:])
    with pytest.raises(ConfigError, match="no feature index"):
        POLICIES.get("dedup")({}).choose(pool, 5, seed=0)


def test_dedup_warns_on_features_of_a_fitted_basis(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    ids = [f"e{i}" for i in range(6)]
    pool = pl.DataFrame({"example_id": ids, "label": [0] * 6, "rank": list(range(1, 7))})
    for projector, warned in (("rademacher", False), ("pca", True)):
        index = _write_set(tmp_path, projector, x, ids, "train", "c", projector=projector)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            POLICIES.get("dedup")({"features": str(index)}).choose(pool, 6, seed=0)
        assert any("factor_basis pca" in r.message for r in caplog.records) == warned


def _kcenter_reference(x: np.ndarray, k: int) -> list[int]:
    chosen = [0]
    while len(chosen) < k:
        d = np.array([min(np.sum((x[i] - x[c]) ** 2) for c in chosen) if i not in chosen else -1 for i in range(len(x))])
        chosen.append(int(np.argmax(d)))
    return chosen


def test_kcenter_matches_reference_and_covers_clusters(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((6, 5)) * 10
    x = centers[rng.integers(0, 6, 120)] + rng.standard_normal((120, 5)) * 0.1
    got = kcenter_greedy(x, 12)
    assert got == _kcenter_reference(x, 12)
    labels = np.argmin(((x[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert len(set(labels[got[:6]])) == 6  # the first six picks hit all six clusters
    ids = [f"k{i:03d}" for i in range(120)]
    index = _write_set(tmp_path, "f", x.astype(np.float32), ids, "train", "c")
    pool = pl.DataFrame({"example_id": ids, "label": [0] * 120})
    out = POLICIES.get("kcenter")({"features": str(index), "normalize": False}).choose(pool, 6, seed=0)
    assert len(set(labels[[ids.index(i) for i in out.get_column("example_id")]])) == 6
    assert out.get_column("position").to_list() == list(range(6))


def test_kmeans_coverage_picks_one_distinct_point_per_cluster(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((8, 6)) * 10
    lab = np.repeat(np.arange(8), 25)
    x = (centers[lab] + rng.standard_normal((200, 6)) * 0.1).astype(np.float32)
    rows = kmeans_coverage(x, 8, seed=0)
    assert len(rows) == len(set(rows)) == 8
    assert len(set(lab[rows])) == 8
    assert kmeans_coverage(x, 8, seed=0) == rows  # seeded
    rows = kmeans_coverage(x, 60, seed=0)
    assert len(rows) == len(set(rows)) == 60
    ids = [f"m{i:03d}" for i in range(200)]
    index = _write_set(tmp_path, "f", x, ids, "train", "c")
    pool = pl.DataFrame({"example_id": ids, "label": lab.tolist()})
    out = POLICIES.get("kmeans_coverage")({"features": str(index)}).choose(pool, 8, seed=1)
    assert len(set(lab[[ids.index(i) for i in out.get_column("example_id")]])) == 8
