"""DGA: the exponentiated-gradient update, alignment, basis reweighting, baselines and refusals of bad input."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
import torch

os.environ["DATASEL_PROGRESS"] = "0"
torch.set_num_threads(1)

from datasel.errors import ConfigError, DataError, DataselError  # noqa: E402
from datasel.mixing.alignment import alignment_table, example_alignment, specific_gradient  # noqa: E402
from datasel.mixing.basis import make_basis  # noqa: E402
from datasel.mixing.clusters import kmeans_labels, nn_domain_histogram  # noqa: E402
from datasel.mixing.dga import alignment_scores, eg_update, train_mixture  # noqa: E402
from datasel.mixing.steps import metrics_frame, prepare_task, run_strategy, weights_frame  # noqa: E402
from datasel.mixing.task import build_task, token_ce  # noqa: E402
from datasel.store import SCHEMAS  # noqa: E402

META = {"kind": "vector", "input_dim": 8, "num_classes": 2, "specific": "target"}
CFG = {
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"steps": 120, "batch_size": 32, "lr": 1e-2, "eval_every": 40},
    "dga": {"eta": 2.0, "beta": 0.5, "update_every": 5, "align_batch": 64},
}


def synthetic(n: int = 200, n_spe: int = 40, seed: int = 0) -> pl.DataFrame:
    """'good' shares the target's rule y = [x0 > 0]; 'flipped' has the opposite rule; 'noise' random labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for dom, split, m in [("good", "train", n), ("flipped", "train", n), ("noise", "train", n),
                          ("target", "train", n_spe), ("target", "test", 200)]:
        x = rng.normal(size=(m, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        if dom == "flipped":
            y = 1 - y
        if dom == "noise":
            y = rng.integers(0, 2, m)
        for i in range(m):
            rows.append((f"{dom}-{split}-{i}", dom, split, int(y[i]), list(x[i])))
    df = pl.DataFrame(rows, schema=["example_id", "domain", "split", "label", "x"], orient="row")
    return df.with_columns(pl.lit("synthetic").alias("source"), pl.col("label").alias("label_orig"),
                           pl.lit(False).alias("is_noisy"), pl.col("x").cast(pl.List(pl.Float32)))


# ------------------------------------------------------------------------------------------------ the update rule

def test_eg_update_known_values():
    w = np.array([0.5, 0.5])
    a = np.array([1.0, 0.0])
    # exp(ln2 * 1) = 2 -> ŵ = [2/3, 1/3]; β = 1 keeps ŵ, β = 0.5 averages with w.
    np.testing.assert_allclose(eg_update(w, a, np.log(2), 1.0), [2 / 3, 1 / 3])
    np.testing.assert_allclose(eg_update(w, a, np.log(2), 0.5), [7 / 12, 5 / 12])
    # clipping a at 0.5 halves the log-step
    np.testing.assert_allclose(eg_update(w, np.array([2.0, 0.0]), np.log(4), 1.0, clip=0.5), [2 / 3, 1 / 3])


def test_eg_update_stays_on_simplex_and_is_shift_invariant():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7))
    a = rng.normal(size=7)
    out = eg_update(w, a, 3.0, 0.3)
    assert np.all(out > 0) and np.isclose(out.sum(), 1)
    np.testing.assert_allclose(out, eg_update(w, a + 5.0, 3.0, 0.3))  # adding a constant to every a_i is a no-op
    assert np.argmax(out / w) == np.argmax(a)  # the most aligned domain gains the most


@pytest.mark.parametrize("eta", [0.0, -1.0])
def test_eta_not_positive_is_refused(eta):
    with pytest.raises(ConfigError, match="eta"):
        eg_update(np.ones(2) / 2, np.zeros(2), eta, 0.5)
    task = build_task(synthetic(20, 10), META, {})
    with pytest.raises(ConfigError, match="eta"):
        train_mixture(task, {**CFG, "dga": {"eta": eta}}, "dga")


def test_alignment_scores_match_numpy():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(4, 30))
    s = rng.normal(size=30)
    gs = [torch.tensor(g) for g in G]
    np.testing.assert_allclose(alignment_scores(gs, torch.tensor(s), "none"), G @ s, rtol=1e-10)
    cos = G @ s / (np.linalg.norm(G, axis=1) * np.linalg.norm(s))
    np.testing.assert_allclose(alignment_scores(gs, torch.tensor(s), "cosine"), cos, rtol=1e-10)
    mn = G @ s / (np.linalg.norm(G, axis=1).mean() * np.linalg.norm(s))
    np.testing.assert_allclose(alignment_scores(gs, torch.tensor(s), "mean_norm"), mn, rtol=1e-10)


# ------------------------------------------------------------------------------------------------ the trainer

def test_dga_upweights_the_domain_that_helps_the_target():
    task = build_task(synthetic(), META, {})
    res = train_mixture(task, CFG, "dga", seed=0)
    alpha = dict(zip(res.domains, res.weights[-1][1]))
    assert alpha["good"] > 0.6, alpha
    assert alpha["flipped"] < 0.15, alpha
    assert all(np.isclose(w.sum(), 1) for _, w in res.weights)
    uni = train_mixture(build_task(synthetic(), META, {}), CFG, "uniform", seed=0)
    assert res.final["loss"] < uni.final["loss"]  # the flipped domain cancels the good one under a uniform mixture


def test_dga_is_deterministic_given_seed():
    a = train_mixture(build_task(synthetic(80, 20), META, {}), {**CFG, "train": {**CFG["train"], "steps": 30}},
                      "dga", seed=3)
    b = train_mixture(build_task(synthetic(80, 20), META, {}), {**CFG, "train": {**CFG["train"], "steps": 30}},
                      "dga", seed=3)
    for (s1, w1), (s2, w2) in zip(a.weights, b.weights):
        assert s1 == s2
        np.testing.assert_array_equal(w1, w2)
    assert a.curve == b.curve


def test_static_baselines():
    df = synthetic(100, 30).filter(~((pl.col("domain") == "noise") & (pl.col("example_id").str.ends_with("7"))))
    task = build_task(df, META, {})
    short = {**CFG, "train": {**CFG["train"], "steps": 5}}
    nat = train_mixture(task, short, "natural").weights[0][1]
    np.testing.assert_allclose(nat, task.sizes / task.sizes.sum())
    np.testing.assert_allclose(train_mixture(task, short, "uniform").weights[0][1], np.full(3, 1 / 3))
    spe = train_mixture(task, short, "specific_only")
    assert spe.domains == ["target"] and spe.weights[0][1].tolist() == [1.0]
    imp = train_mixture(task, short, "importance").weights[0][1]
    # the target's inputs are drawn like every domain's, so the NN histogram is a proper distribution over domains
    assert np.isclose(imp.sum(), 1) and np.all(imp >= 0)


def test_nn_histogram_known_values():
    pool = [np.array([[0.0, 0.0], [0.1, 0.0]]), np.array([[5.0, 5.0]]), np.array([[-5.0, 5.0]])]
    q = np.array([[0.0, 0.1], [4.9, 5.0], [0.05, 0.0], [0.2, 0.2]])
    np.testing.assert_allclose(nn_domain_histogram(pool, q), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(nn_domain_histogram(pool, q, smoothing=1.0), [4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(DataError):
        nn_domain_histogram(pool, np.zeros((0, 2)))


# ------------------------------------------------------------------------------------------------ many domains

def test_basis_matrices():
    sizes = np.array([10.0, 30.0, 5.0, 5.0, 50.0, 1.0])
    cents = np.array([[0, 0], [0.1, 0], [10, 10], [10.1, 10], [-10, 5], [-10.1, 5]], dtype=np.float32)
    np.testing.assert_array_equal(make_basis(6, {"kind": "identity"}, sizes), np.eye(6))
    P = make_basis(6, {"kind": "groups", "n_basis": 3}, sizes, cents)
    assert P.shape == (3, 6) and np.allclose(P.sum(1), 1)
    # each close pair shares a row, in proportion to its sizes
    row = P[:, 0].argmax()
    np.testing.assert_allclose(P[row, :2], [0.25, 0.75])
    D = make_basis(6, {"kind": "dirichlet", "n_basis": 4, "concentration": 0.2}, sizes, seed=1)
    assert D.shape == (4, 6) and np.allclose(D.sum(1), 1) and D.min() > 0


def test_kmeans_domains_and_basis_reweighting():
    df = synthetic(150, 30)
    cfg = {**CFG, "domains": {"method": "kmeans", "k": 12, "on": "inputs"},
           "basis": {"kind": "groups", "n_basis": 4}, "train": {**CFG["train"], "steps": 40}}
    task, res = run_strategy(df, META, cfg, "dga", seed=0)
    assert len(task.domains) == 12 and all(d.startswith("c") for d in task.domains)
    assert sum(len(y) for y in task.ys) == 450
    assert res.arm_weights[-1][1].shape == (4,)
    assert len(res.weights[-1][1]) == 12 and np.isclose(res.weights[-1][1].sum(), 1)
    labels = kmeans_labels(np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32), 5, seed=0)
    assert set(labels) <= set(range(5))
    with pytest.raises(ConfigError, match="k-means"):
        kmeans_labels(np.zeros((3, 2), np.float32), 10)
    task2 = prepare_task(df, META, {"domains": {"method": "kmeans", "k": 6, "on": "grads"}, "model": CFG["model"]})
    assert len(task2.domains) <= 6


# ------------------------------------------------------------------------------------------------ outputs

def test_tables_follow_schemas():
    task = build_task(synthetic(60, 20), META, {})
    res = train_mixture(task, {**CFG, "train": {**CFG["train"], "steps": 20}}, "dga")
    w = SCHEMAS["domain_weights"].validate(weights_frame(res, "dga_dga_seed0"), "w")
    assert set(w["domain"]) == {"good", "flipped", "noise"}
    assert w.group_by("step").agg(pl.col("weight").sum())["weight"].to_list() == pytest.approx([1.0] * 5)
    m = SCHEMAS["metrics"].validate(metrics_frame(res, 0), "m")
    assert set(m["metric"]) == {"loss", "accuracy", "min_loss"}


def test_example_alignment_matches_slow_loop():
    task = build_task(synthetic(30, 20), META, {})
    from datasel.models import build_model

    torch.manual_seed(0)
    model = build_model(CFG["model"], META)
    g_spe = specific_gradient(model, task.spe_x, task.spe_y)
    flat_spe = torch.cat([g.reshape(-1) for g in g_spe.values()])
    full = token_ce(model(task.spe_x), task.spe_y)
    ref_spe = torch.cat([g.reshape(-1) for g in torch.autograd.grad(full, list(model.parameters()))])
    torch.testing.assert_close(flat_spe, ref_spe)
    x, y = task.xs[0][:10], task.ys[0][:10]
    dot, cos = example_alignment(model, x, y, g_spe, chunk_size=4)
    for i in range(10):
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(token_ce(model(x[i : i + 1]), y[i : i + 1]),
                                                                    list(model.parameters()))])
        torch.testing.assert_close(dot[i], g @ ref_spe, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cos[i], g @ ref_spe / (g.norm() * ref_spe.norm()), rtol=1e-4, atol=1e-6)
    table = alignment_table(model, task, {})
    assert table.height == 90 and table["score"].is_between(-1, 1).all()


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_is_refused_with_a_named_field():
    df = synthetic(20, 10)
    with pytest.raises(DataError, match="missing"):
        build_task(df, {**META, "specific": "nope"}, {})
    with pytest.raises(DataError, match="no train rows"):
        build_task(df.filter(~((pl.col("domain") == "target") & (pl.col("split") == "train"))), META, {})
    with pytest.raises(DataError, match="no domains"):
        build_task(df.filter(pl.col("domain") == "target"), META, {})
    with pytest.raises(DataError, match="no domain column"):
        build_task(df.drop("domain"), META, {})
    with pytest.raises(ConfigError, match="specific"):
        build_task(df, {**META, "specific": None}, {})
    task = build_task(df, META, {})
    task.xs[1], task.ys[1] = task.xs[1][:0], task.ys[1][:0]
    with pytest.raises(DataError, match="no examples"):
        train_mixture(task, CFG, "dga")
    with pytest.raises(ConfigError, match="strategy"):
        train_mixture(build_task(df, META, {}), CFG, "magic")
    with pytest.raises(ConfigError, match="beta"):
        train_mixture(build_task(df, META, {}), {**CFG, "dga": {"beta": 1.5}}, "dga")
    with pytest.raises(DataselError) as err:
        build_task(df, {**META, "specific": "nope"}, {}, source="results/x.parquet")
    assert "results/x.parquet" in str(err.value) and "fix:" in str(err.value)


def test_language_model_case_and_its_alignment_scores():
    """Char-level TinyGPT: the target uses a/b/z/space, so the domain over a/b/c/space must beat the x/y/z one."""
    rng = np.random.default_rng(0)
    rows = []
    for dom, chars in [("abc", "abc "), ("xyz", "xyz\n"), ("target", "abz ")]:
        for split in ("train", "test"):
            for i in range(16):
                rows.append((f"{dom}{split}{i}", dom, split, "".join(rng.choice(list(chars), 9))))
    df = pl.DataFrame(rows, schema=["example_id", "domain", "split", "text"], orient="row").with_columns(
        pl.lit("s").alias("source"), pl.lit(0).alias("label"), pl.lit(0).alias("label_orig"),
        pl.lit(False).alias("is_noisy"))
    meta = {"kind": "text", "vocab": " \nabcxyz?", "vocab_size": 9, "block_size": 8, "specific": "target"}
    task = build_task(df, meta, {})
    assert task.xs[0].shape == (16, 8) and task.ys[0].dtype == torch.long
    cfg = {"model": {"name": "tiny_gpt", "d_model": 16, "n_layer": 1, "n_head": 2},
           "train": {"steps": 30, "lr": 1e-2, "batch_size": 8, "eval_every": 10},
           "dga": {"update_every": 5, "align_batch": 8, "eta": 2.0}}
    res = train_mixture(task, cfg, "dga")
    alpha = dict(zip(res.domains, res.weights[-1][1]))
    assert alpha["abc"] > alpha["xyz"], alpha
    # at initialization the target's gradient (raise a, b, z, space) points the way the abc domain's does
    from datasel.models import build_model

    torch.manual_seed(0)
    table = alignment_table(build_model(cfg["model"], meta), task, {})
    mean = dict(table.group_by("domain").agg(pl.col("score").mean()).iter_rows())
    assert mean["abc"] > mean["xyz"], mean
    assert table.height == 32 and table["score"].is_between(-1, 1).all()


def test_no_domain_labels_specific_split_and_kmeans():
    """Data without a domain column: the validation split is the specific set, the pool is clustered by k-means."""
    df = synthetic(60, 20).drop("domain")
    df = df.with_columns(pl.when(pl.col("example_id").str.starts_with("target-train")).then(pl.lit("val"))
                         .otherwise(pl.col("split")).alias("split"))
    cfg = {**CFG, "task": {"specific_split": "val", "eval_split": "test"},
           "domains": {"method": "kmeans", "k": 5}, "train": {**CFG["train"], "steps": 10}}
    task, res = run_strategy(df, META, cfg, "dga", seed=0)
    assert len(task.domains) == 5 and len(task.spe_y) == 20 and len(task.eval_y) == 200
    assert sum(len(y) for y in task.ys) == 180 + 0  # good, flipped, noise train rows (target rows are val/test)
    with pytest.raises(DataError, match="no domain column"):
        build_task(df, META, {})
    with pytest.raises(DataError, match="empty"):
        build_task(df, META, {"specific_split": "holdout"}, domain_labels=np.zeros(180))
