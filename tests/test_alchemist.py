"""Alchemist: the rater, the bilevel update against a slow autograd reference, noise detection, the Scorer."""

from __future__ import annotations

import copy
import os

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from datasel.errors import ConfigError, DataError
from datasel.meta.bilevel import BilevelConfig, _batches, train_rater
from datasel.meta.rater import Rater, rate
from datasel.models import build_model
from datasel.scoring import SCORERS, ScoreInputs, finalize_scores
from datasel.scoring.alchemist import alchemist_run, rater_features
from datasel.store import write_table

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)

META = {"kind": "vector", "input_dim": 12, "num_classes": 3, "classes": ["0", "1", "2"]}


def blobs(n_train: int = 600, n_val: int = 150, noise: float = 0.25, seed: int = 0):
    """Three Gaussian classes in 12-D; a share of the training labels flipped to another class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 12, generator=g) * 1.6

    def draw(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return centers[y] + torch.randn(n, 12, generator=g), y

    x, y_true = draw(n_train)
    xv, yv = draw(n_val)
    flip = torch.rand(n_train, generator=g) < noise
    y = torch.where(flip, (y_true + torch.randint(1, 3, (n_train,), generator=g)) % 3, y_true)
    return x, y, xv, yv, flip


def trained_proxy(x, y, epochs: int = 8, seed: int = 0):
    from datasel.training.classify import train_classifier

    torch.manual_seed(seed)
    model = build_model({"name": "mlp", "hidden": [32]}, META)
    cfg = {"batch_size": 64, "lr": 3e-3, "budget": {"unit": "epochs", "value": epochs}}
    return train_classifier(model, x, y, cfg, seed=seed)


# ---------------------------------------------------------------------------------------------------------- rater
def test_weights_are_batch_softmax_times_group_weight_and_permutation_equivariant():
    torch.manual_seed(0)
    rater = Rater(5, hidden=[8], group=True, group_hidden=[4])
    for p in rater.parameters():  # move off the zero init so the test is not trivial
        torch.nn.init.normal_(p, std=0.5)
    f = torch.randn(16, 5)
    w = rater(f)
    s = rater.raw_scores(f)
    assert torch.allclose(w, torch.softmax(s, 0) * rater.batch_weight(f))
    assert 0 < float(rater.batch_weight(f).detach()) < 1
    assert torch.isclose(w.sum(), rater.batch_weight(f))
    perm = torch.randperm(16)
    assert torch.allclose(rater(f[perm]), w[perm], atol=1e-6)
    # the rating orders samples exactly as the weights of any batch they share
    assert torch.equal(torch.argsort(rate(rater, f)), torch.argsort(w))


def test_zero_init_gives_uniform_weights_and_ablation_holds_batch_weight():
    f = torch.randn(10, 4)
    assert torch.allclose(Rater(4)(f), torch.full((10,), 0.05))
    ablated = Rater(4, group=False)
    assert ablated.group is None and float(ablated.batch_weight(f)) == 0.5


# ------------------------------------------------------------------------------------------ bilevel vs reference
def _reference(model, rater, feats, x, y, xv, yv, cfg: BilevelConfig, seed: int):
    """The same loop written with nn.Module copies, loss.backward-style autograd and a per-sample loop for
    Σ_i pen_i ∇_μ W_i — no torch.func — and plain SGD on the rater. ``warmup: paper``: θ stands still during the
    warm-up and is replaced by a copy of θ̂ when it ends."""
    theta, theta_hat, rater = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(rater)
    gen = torch.Generator().manual_seed(seed)
    ti, vi = _batches(x.shape[0], cfg.batch_size, gen), _batches(xv.shape[0], cfg.val_batch_size, gen)
    for step in range(cfg.warmup_steps + cfg.steps):
        idx, vidx = next(ti), next(vi)
        if cfg.warmup == "paper" and step == cfg.warmup_steps and step > 0:
            theta = copy.deepcopy(theta_hat)
        with torch.no_grad():
            w = rater(feats[idx])
        l_t = F.cross_entropy(theta(x[idx]), y[idx], reduction="none")
        obj_t = cfg.val_weight * F.cross_entropy(theta(xv[vidx]), yv[vidx]) + (w * l_t).sum()
        gt = torch.autograd.grad(obj_t, list(theta.parameters()))
        if cfg.warmup == "paper" and step < cfg.warmup_steps:
            gt = [torch.zeros_like(g) for g in gt]
        l_h = F.cross_entropy(theta_hat(x[idx]), y[idx], reduction="none")
        gh = torch.autograd.grad((w * l_h).sum(), list(theta_hat.parameters()))
        if step >= cfg.warmup_steps:
            pen = (l_t - l_h).detach() if cfg.update == "penalty" else l_t.detach()
            W = rater(feats[idx])
            params = list(rater.parameters())
            total = [torch.zeros_like(p) for p in params]
            for i in range(W.shape[0]):
                gi = torch.autograd.grad(W[i], params, retain_graph=True)
                total = [t + pen[i] * g for t, g in zip(total, gi)]
            with torch.no_grad():
                for p, t in zip(params, total):
                    p -= cfg.rater_lr * t
        with torch.no_grad():
            for p, g in zip(theta.parameters(), gt):
                p -= cfg.proxy_lr * g
            for p, g in zip(theta_hat.parameters(), gh):
                p -= cfg.proxy_lr * g
    return rater


@pytest.mark.parametrize("update,group,warmup", [("penalty", True, "paper"), ("simplified", True, "paper"),
                                                 ("penalty", False, "paper"), ("penalty", True, "joint"),
                                                 ("simplified", False, "joint")])
def test_meta_update_matches_slow_autograd_reference(update, group, warmup):
    x, y, xv, yv, _ = blobs(96, 40)
    torch.manual_seed(1)
    model = build_model({"name": "mlp", "hidden": [16]}, META)
    feats = torch.randn(96, 6)
    rater = Rater(6, hidden=[8], group=group, group_hidden=[4])
    for p in rater.parameters():
        torch.nn.init.normal_(p, std=0.3)
    cfg = BilevelConfig(steps=3, warmup_steps=2, batch_size=16, val_batch_size=8, proxy_lr=0.5, rater_lr=0.3,
                        rater_optimizer="sgd", update=update, val_weight=2.0, warmup=warmup)
    ref = _reference(model, rater, feats, x, y, xv, yv, cfg, seed=5)
    start = copy.deepcopy(rater)
    got, hist = train_rater(model, feats, x, y, xv, yv, cfg, rater, seed=5, device="cpu")
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(got.parameters(), start.parameters()))
    assert moved > 1e-4  # the update did something, so agreement is not vacuous
    for (name, a), b in zip(got.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert hist.rows and hist.rows[-1]["step"] == 5


def _hand_two_steps_float64(W, b, a, c, x, y, xv, yv, feats, beta, alpha, lam):
    """Two ``warmup: joint`` penalty steps of a linear proxy and a linear rater without a group MLP, on full
    batches, written with numpy from the closed forms: dCE/dlogits = softmax - onehot, W_i = softmax(F a + c)_i / 2,
    d(sum_i pen_i softmax_i)/ds_j = softmax_j (pen_j - sum_k softmax_k pen_k)."""
    def softmax(z, axis):
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def ce_and_dlogits(W, b, x, y):
        z = x @ W.T + b
        p = softmax(z, 1)
        loss = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(y)), y]
        p[np.arange(len(y)), y] -= 1.0
        return loss, p

    s = feats @ a + c
    w = 0.5 * softmax(s, 0)  # the rater does not move in step 1 (the penalty is zero while θ = θ̂)
    theta, theta_hat = (W, b), (W.copy(), b.copy())
    for step in range(2):
        _, d = ce_and_dlogits(*theta, x, y)
        _, dv = ce_and_dlogits(*theta, xv, yv)
        gW = lam * dv.T @ xv / len(yv) + (w[:, None] * d).T @ x
        gb = lam * dv.mean(0) + (w[:, None] * d).sum(0)
        _, dh = ce_and_dlogits(*theta_hat, x, y)
        hW, hb = (w[:, None] * dh).T @ x, (w[:, None] * dh).sum(0)
        if step == 1:
            pen = ce_and_dlogits(*theta, x, y)[0] - ce_and_dlogits(*theta_hat, x, y)[0]
            q = softmax(s, 0)
            g = 0.5 * q * (pen - (q * pen).sum())
            a, c = a - alpha * feats.T @ g, c - alpha * g.sum()
        theta = (theta[0] - beta * gW, theta[1] - beta * gb)
        theta_hat = (theta_hat[0] - beta * hW, theta_hat[1] - beta * hb)
    return a, c


def test_float64_step_matches_a_float64_hand_computation():
    """A float64 run keeps float64 losses: the rater after the first real meta-step agrees with the closed-form
    computation to 1e-12 (logits cast to float32 put the error near 1e-9)."""
    g = torch.Generator().manual_seed(3)
    x, xv = torch.randn(24, 12, generator=g, dtype=torch.float64), torch.randn(10, 12, generator=g,
                                                                              dtype=torch.float64)
    y, yv = torch.randint(0, 3, (24,), generator=g), torch.randint(0, 3, (10,), generator=g)
    feats = torch.randn(24, 5, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(12, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 12, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    rater = Rater(5, hidden=[], group=False).double()
    with torch.no_grad():
        rater.instance[0].weight.copy_(torch.randn(1, 5, generator=g, dtype=torch.float64))
        rater.instance[0].bias.fill_(0.3)
    a0, c0 = rater.instance[0].weight[0].detach().numpy().copy(), float(rater.instance[0].bias.detach())
    cfg = BilevelConfig(steps=2, warmup_steps=0, warmup="joint", batch_size=24, val_batch_size=10, proxy_lr=0.7,
                        rater_lr=2.0, rater_optimizer="sgd", update="penalty", val_weight=1.5)
    got, _ = train_rater(model, feats, x, y, xv, yv, cfg, rater, seed=0, device="cpu")
    a, c = _hand_two_steps_float64(model.weight.detach().numpy(), model.bias.detach().numpy(), a0, c0, x.numpy(),
                                   y.numpy(), xv.numpy(), yv.numpy(), feats.numpy(), 0.7, 2.0, 1.5)
    assert got.instance[0].weight.dtype == torch.float64
    assert np.abs(a - a0).max() > 1e-3  # the step moved the rater: agreement is not the start agreeing with itself
    np.testing.assert_allclose(got.instance[0].weight[0].detach().numpy(), a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(float(got.instance[0].bias.detach()), c, rtol=0, atol=1e-12)


def test_penalty_is_zero_while_the_proxies_coincide():
    """With λ = 0 both proxies follow the same objective, so ℓ(θ) − ℓ(θ̂) ≡ 0 and the penalty form never moves μ."""
    x, y, xv, yv, _ = blobs(64, 32)
    model = build_model({"name": "mlp", "hidden": [8]}, META)
    rater = Rater(12, hidden=[4])
    before = [p.detach().clone() for p in rater.parameters()]
    cfg = BilevelConfig(steps=5, warmup_steps=0, batch_size=16, val_weight=0.0, rater_optimizer="sgd")
    train_rater(model, x, x, y, xv, yv, cfg, rater, seed=0, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(rater.parameters(), before))


# --------------------------------------------------------------------------------------------- method behaviour
def test_rater_ranks_mislabeled_examples_low_and_is_deterministic():
    from sklearn.metrics import roc_auc_score

    x, y, xv, yv, flip = blobs()
    model = trained_proxy(x, y)
    cfg = {"steps": 200, "warmup_steps": 20, "batch_size": 64, "rater_features": ["penultimate", "label", "grad"]}
    r1, hist, timings = alchemist_run(model, x, y, xv, yv, 3, cfg, seed=0, device="cpu")
    r2, _, _ = alchemist_run(model, x, y, xv, yv, 3, cfg, seed=0, device="cpu")
    assert torch.equal(r1, r2)
    auc = roc_auc_score((~flip).numpy(), r1.numpy())
    assert auc > 0.75, auc
    order = torch.argsort(r1, descending=True)
    bottom, top = flip[order[-60:]].float().mean(), flip[order[:60]].float().mean()
    assert bottom > 2 * top
    assert set(timings) == {"features_s", "meta_train_s", "rate_s"}
    # θ follows the validation set: its validation loss falls over meta-training
    assert hist.rows[-1]["val_loss_theta"] < hist.rows[0]["val_loss_theta"]


def test_without_label_information_penultimate_features_cannot_see_noise():
    """A sanity check of the feature docs: the same activations for a clean and a flipped example give them the
    same rating, so 'penultimate' alone is blind to label noise on duplicated inputs."""
    x, y, xv, yv, _ = blobs(200, 60)
    x2, y2 = torch.cat([x, x]), torch.cat([y, (y + 1) % 3])
    model = trained_proxy(x, y, epochs=2)
    r, _, _ = alchemist_run(model, x2, y2, xv, yv, 3, {"steps": 20, "warmup_steps": 5, "batch_size": 32,
                                                       "rater_features": ["penultimate"]}, seed=0, device="cpu")
    assert torch.allclose(r[:200], r[200:])


def test_grad_block_is_the_shared_projection_of_last_layer_gradients():
    from datasel.features.grads import per_sample_grads
    from datasel.features.projectors import DenseProjector

    x, y, *_ = blobs(80, 20)
    model = build_model({"name": "mlp", "hidden": [16]}, META)
    got = rater_features(model, x, y, 3, ["grad"], proj_dim=7, seed=4)
    g = per_sample_grads(model, x, y, F.cross_entropy, params="last_layer")
    ref = DenseProjector(g.shape[1], 7, seed=4).project(g)
    ref = (ref - ref.mean(0)) / ref.std(0)
    assert got.shape == (80, 7) and torch.allclose(got, ref, atol=1e-4)
    # a gradient narrower than proj_dim is kept whole
    assert rater_features(model, x, y, 3, ["grad"], proj_dim=500).shape == (80, g.shape[1])


def test_feature_blocks_are_zscored_and_bad_kinds_refused():
    x, y, *_ = blobs(100, 20)
    model = build_model({"name": "mlp", "hidden": [8]}, META)
    f = rater_features(model, x, y, 3, ["penultimate", "label", "loss", "grad"], proj_dim=5)
    assert f.shape == (100, 8 + 3 + 1 + 5)
    live = f.std(0) > 0
    assert torch.allclose(f.mean(0), torch.zeros(f.shape[1]), atol=1e-5)
    assert torch.allclose(f.std(0)[live], torch.ones(int(live.sum())), atol=1e-4)
    with pytest.raises(ConfigError) as err:
        rater_features(model, x, y, 3, ["pixels"])
    assert err.value.field == "scoring.alchemist.rater_features"


@pytest.mark.parametrize(
    "key, value", [("update", "exact"), ("rater_optimizer", "lbfgs"), ("proxy_lr", 0.0), ("batch_size", 1),
                   ("steps", -1), ("proxy_init", "random"), ("warmup", "both")]
)
def test_bad_config_names_its_field(key, value):
    with pytest.raises(ConfigError) as err:
        BilevelConfig.from_cfg({key: value})
    assert err.value.field == f"scoring.alchemist.{key}" and err.value.fix


# ------------------------------------------------------------------------------------------------------- scorer
def _write_examples(tmp_path, x, y, xv, yv, flip):
    rows = []
    for split, xs, ys, noisy in (("train", x, y, flip), ("val", xv, yv, torch.zeros(len(yv), dtype=torch.bool))):
        for i in range(xs.shape[0]):
            rows.append({"example_id": f"{split}-{i:05d}", "source": "blobs", "split": split, "label": int(ys[i]),
                         "label_orig": int(ys[i]), "is_noisy": bool(noisy[i]),
                         "x": np.asarray(xs[i], dtype=np.float32).tolist()})
    df = pl.DataFrame(rows, schema_overrides={"x": pl.List(pl.Float32)})
    return write_table(df, tmp_path / "examples" / "examples.parquet", "examples")


def test_scorer_rates_every_training_example_over_runs(tmp_path):
    from datasel.training.proxy import save_checkpoint

    x, y, xv, yv, flip = blobs(300, 80)
    path = _write_examples(tmp_path, x, y, xv, yv, flip)
    ckpts = []
    for k in range(2):
        p = tmp_path / f"proxy/seed{k}/epoch3.pt"
        save_checkpoint(p, trained_proxy(x, y, epochs=3, seed=k), model_cfg={"name": "mlp", "hidden": [32]},
                        epoch=3, seed=k)
        ckpts.append(p)
    cfg = {"method": "alchemist", "epoch": 3, "runs": 2, "steps": 40, "warmup_steps": 5, "batch_size": 32}
    inputs = ScoreInputs(examples=path, meta=META, checkpoints=ckpts, device="cpu", seed=0)
    scorer = SCORERS.get("alchemist")(cfg)
    assert "proxy" in scorer.needs
    df = scorer.score(inputs)
    assert sorted(df.get_column("example_id")) == [f"train-{i:05d}" for i in range(300)]
    assert df.get_column("score").is_finite().all() and (df.get_column("score_std") > 0).any()
    table = finalize_scores(df, "alchemist")
    write_table(table, tmp_path / "scores" / "alchemist.parquet", "scores")
    again = SCORERS.get("alchemist")(cfg).score(inputs)
    assert again.get_column("score").to_list() == df.get_column("score").to_list()
    with pytest.raises(DataError):
        scorer.score(ScoreInputs(examples=path, meta=META, checkpoints=[]))


# -------------------------------------------------------------------------------------------------- diagnostics
def test_noise_profile_and_auc_match_references():
    from sklearn.metrics import roc_auc_score

    from datasel.meta.diagnostics import auc_clean_high, noise_profile

    rng = np.random.default_rng(0)
    score = rng.normal(size=200)
    score[:40] -= 1.5  # the first 40 are noisy and rated lower
    noisy = np.arange(200) < 40
    assert auc_clean_high(score, noisy) == pytest.approx(roc_auc_score(~noisy, score))
    ties = np.array([1.0, 1.0, 0.0])
    assert auc_clean_high(ties, np.array([False, True, True])) == pytest.approx(0.75)
    ids = [f"e{i:03d}" for i in range(200)]
    examples = pl.DataFrame({"example_id": ids, "split": ["train"] * 200, "is_noisy": noisy})
    scores = finalize_scores(pl.DataFrame({"example_id": ids, "score": score}), "x")
    prof = noise_profile(examples, scores, bins=4)
    assert prof.get_column("count").to_list() == [50, 50, 50, 50]
    order = np.argsort(-score, kind="stable")
    want = [noisy[order[i * 50 : (i + 1) * 50]].mean() for i in range(4)]
    assert np.allclose(prof.get_column("noisy_share").to_numpy(), want)
    with pytest.raises(DataError):
        noise_profile(examples, scores.head(10), bins=4)
