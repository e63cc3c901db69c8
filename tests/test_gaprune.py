"""GAPrune: InfoNCE, gradient statistics, DAI, masks, retraining with a fixed mask, saving, the per-example extension.

Every test runs on a seeded 2-layer random BERT (hidden 32) with the packaged MiniLM tokenizer: seconds on a CPU.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from datasel.data.triplets import Triplets
from datasel.errors import ConfigError
from datasel.models.embedding import load_embedding_model, save_embedding_model, tiny_random_model
from datasel.pruning import candidate_params, gradient_statistics, masks_from_scores, score_weights, sparsity_of
from datasel.pruning.dai import alignment, dai_importance, smooth3x3, tensor_cosine
from datasel.pruning.pipeline import run_one
from datasel.scoring.gaprune_example import example_scores
from datasel.store import write_table
from datasel.training.embedding import info_nce_loss, train_embedding, triplet_loss

torch.set_num_threads(1)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def make_triplets(n: int, set_: str, split: str, seed: int) -> Triplets:
    g = torch.Generator().manual_seed(seed)
    q, p, neg = [], [], []
    for i in range(n):
        w = [WORDS[j] for j in torch.randint(0, len(WORDS), (6,), generator=g).tolist()]
        q.append(f"{set_} {i} " + " ".join(w[:3]))
        p.append(" ".join(w[:3]) + f" answer {i} " + " ".join(w[3:]))
        neg.append(" ".join(w[3:]) + f" other {i + 1}")
    return Triplets(q, p, neg, set=[set_] * n, split=[split] * n)


@pytest.fixture(scope="module")
def triplets() -> Triplets:
    return Triplets.concat([make_triplets(16, "domain", "train", 0), make_triplets(12, "domain", "eval", 1),
                            make_triplets(16, "general", "train", 2), make_triplets(12, "general", "eval", 3)])


@pytest.fixture()
def model():
    return tiny_random_model(32).eval()


def test_info_nce_matches_manual():
    g = torch.Generator().manual_seed(0)
    q, p, n = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    docs = torch.cat([p, n])
    manual = 0.0
    for i in range(4):
        logits = [20 * float(q[i] @ d) for d in docs]
        manual += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert float(info_nce_loss(q, p, n, 20.0)) == pytest.approx(manual / 4, rel=1e-5)
    assert float(info_nce_loss(q, p, None)) < float(info_nce_loss(q, p, n)) + 1e-6  # more negatives, larger loss


def test_smooth_and_alignment():
    t = torch.arange(20.0).reshape(4, 5)
    s = smooth3x3(t)
    for i in range(4):
        for j in range(5):
            ref = sum(float(t[a, b]) for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                      if 0 <= a < 4 and 0 <= b < 5) / 9.0  # zero padding, divide by 9 (the official conv2d)
            assert float(s[i, j]) == pytest.approx(ref)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    assert float(alignment(a, b, smooth=False).sum()) == pytest.approx(tensor_cosine(a, b), abs=1e-6)
    assert float(alignment(a, a, smooth=False).sum()) == pytest.approx(1.0, abs=1e-6)


def test_dai_matches_elementwise_reference():
    g = torch.Generator().manual_seed(2)
    fd, fg = torch.rand(3, 4, generator=g), torch.rand(3, 4, generator=g)
    a = torch.randn(3, 4, generator=g) * 3  # large enough to hit both clip bounds
    w = torch.randn(3, 4, generator=g)
    got = dai_importance(fd, fg, a, w, beta=0.7, c=0.5)
    for i in range(3):
        for j in range(4):
            m = abs(float(w[i, j]))
            factor = min(1.2, max(0.8, 1 + 0.2 * float(a[i, j])))
            raw = (float(fd[i, j]) - 0.7 * float(fg[i, j])) * m * factor + 0.5 * math.sqrt(m + 1e-8)
            assert float(got[i, j]) == pytest.approx(math.log1p(math.exp(raw)), rel=1e-5)


def test_candidate_presets(model):
    names = set(candidate_params(model, "mlp"))
    assert names == {f"backbone.encoder.layer.{i}.{t}.dense.weight" for i in range(2) for t in ("intermediate", "output")}
    assert all("attention" in n for n in candidate_params(model, "attention"))
    with pytest.raises(ConfigError, match="candidates"):
        candidate_params(model, ["no_such_tensor"])


@pytest.mark.parametrize("budget", ["global", "per_layer", "per_tensor"])
def test_masks_prune_exactly_the_lowest(budget):
    g = torch.Generator().manual_seed(3)
    scores = {f"enc.layer.{i}.w{j}": torch.rand(8, 6, generator=g) + i for i in range(3) for j in range(2)}
    masks = masks_from_scores(scores, 0.4, budget)
    groups = {"global": lambda n: "all", "per_layer": lambda n: n.split(".")[2], "per_tensor": lambda n: n}[budget]
    for grp in {groups(n) for n in scores}:
        members = [n for n in scores if groups(n) == grp]
        # each budget group loses exactly round(sparsity × its size)
        assert sum(int((~masks[n]).sum()) for n in members) == round(0.4 * sum(scores[n].numel() for n in members))
        kept = torch.cat([scores[n][masks[n]] for n in members])
        pruned = torch.cat([scores[n][~masks[n]] for n in members])
        assert pruned.max() <= kept.min()
    if budget == "global":  # layer 0 scores are lowest: it loses the most
        assert masks["enc.layer.0.w0"].float().mean() < masks["enc.layer.2.w0"].float().mean()
    with pytest.raises(ConfigError):
        masks_from_scores(scores, 1.0)
    with pytest.raises(ConfigError):
        masks_from_scores(scores, 0.5, "per_galaxy")


def test_gradient_statistics_match_slow_reference(model, triplets):
    params = candidate_params(model, "mlp")
    dom, gen = triplets.where("domain", "train"), triplets.where("general", "train")
    stats = gradient_statistics(model, dom, gen, params, {"batch_size": 8, "max_seq_len": 32, "mode": "eval",
                                                          "normalize": "batches"}, seed=0)
    from datasel.training.embedding import batches

    def batch_grads(data, seed):
        out = []
        for b in batches(data, 8, seed):
            loss = triplet_loss(model, b, 20.0, 32)
            out.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
        return out

    gd, gg = batch_grads(dom, 0), batch_grads(gen, 1)
    for n in params:
        ref_fd = torch.stack([g[n] ** 2 for g in gd]).mean(0)
        ref_gg = torch.stack([g[n] for g in gg]).mean(0)
        torch.testing.assert_close(stats.fisher_domain[n], ref_fd, rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(stats.grad_general[n], ref_gg, rtol=1e-4, atol=1e-10)
        cos = [float(F.cosine_similarity(a[n].flatten(), b[n].flatten(), dim=0)) for a, b in zip(gd, gg)]
        assert stats.batch_cos_mean[n] == pytest.approx(sum(cos) / len(cos), abs=1e-5)
        assert stats.conflict_rate[n] == pytest.approx(sum(c < 0 for c in cos) / len(cos))
    # DAI scores: per tensor, sigmoid of a z-score → mean ≈ 0.5, values in (0, 1)
    dai = score_weights("dai", params, stats, {})
    for n, s in dai.items():
        assert s.shape == params[n].shape and 0 < float(s.min()) and float(s.max()) < 1
    with pytest.raises(ConfigError, match="needs gradient statistics"):
        score_weights("fisher", params, None)


def test_fisher_normalized_by_samples_in_train_mode(model, triplets, monkeypatch):
    """The official estimator: Σ_batches g_b² / number of triplets, gathered with dropout on (train mode)."""
    params = candidate_params(model, "mlp")
    dom, gen = triplets.where("domain", "train").subset(range(13)), triplets.where("general", "train")
    from datasel.pruning import stats as stats_mod
    from datasel.runtime import seed_everything
    from datasel.training.embedding import batches

    modes: list[bool] = []
    orig = stats_mod.triplet_loss

    def spy(m, *a, **k):
        modes.append(m.training)
        return orig(m, *a, **k)

    monkeypatch.setattr(stats_mod, "triplet_loss", spy)
    assert not model.training
    got = gradient_statistics(model, dom, gen, params, {"batch_size": 4, "max_seq_len": 32}, seed=5)
    assert modes and all(modes) and not model.training  # dropout on while gathering, the caller's mode restored
    monkeypatch.setattr(stats_mod, "triplet_loss", orig)
    # slow reference: the same seeded dropout stream, batches taken in the same interleaved order, explicit sums
    seed_everything(5)
    model.train()
    dom_b = [b for b in batches(dom, 4, 5) if len(b) > 1]
    gen_b = [b for b in batches(gen, 4, 6) if len(b) > 1]
    sq = {k: {n: torch.zeros_like(p) for n, p in params.items()} for k in ("d", "g")}
    for i in range(max(len(dom_b), len(gen_b))):
        for key, bl in (("d", dom_b), ("g", gen_b)):
            if i < len(bl):
                grads = torch.autograd.grad(triplet_loss(model, bl[i], 20.0, 32), list(params.values()))
                for n, g in zip(params, grads):
                    sq[key][n] += g * g
    model.eval()
    n_dom = sum(len(b) for b in dom_b)
    assert n_dom == 12 and len(dom_b) == 3  # 13 = 4 + 4 + 4 + 1: the singleton batch is dropped, 12 triplets count
    for n in params:
        torch.testing.assert_close(got.fisher_domain[n], sq["d"][n] / n_dom, rtol=1e-4, atol=1e-14)
        torch.testing.assert_close(got.fisher_general[n], sq["g"][n] / len(gen), rtol=1e-4, atol=1e-14)
    with pytest.raises(ConfigError, match="fisher.normalize"):
        gradient_statistics(model, dom, gen, params, {"normalize": "rows"})
    with pytest.raises(ConfigError, match="fisher.mode"):
        gradient_statistics(model, dom, gen, params, {"mode": "dropout"})


def _reference_postproc(vals: list[float], how: str) -> list[float]:
    n = len(vals)
    if how == "minmax":
        lo, hi = min(vals), max(vals)
        return [(v - lo) / (hi - lo + 1e-8) for v in vals]
    if how == "rank":
        order = sorted(range(n), key=lambda i: (vals[i], i))
        out = [0.0] * n
        for r, i in enumerate(order):
            out[i] = (r + 1) / n
        return out
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return [1 / (1 + math.exp(-(v - mean) / (std + 1e-8))) for v in vals]


@pytest.mark.parametrize("post", ["zscore_sigmoid", "minmax", "rank"])
def test_dai_postprocessing_rescue_and_fusion_match_reference(post):
    """GAPrune's post-processing, recomputed weight by weight: rescue of flat tensors, min-max / rank, fusion α/β."""
    from datasel.pruning.stats import GradStats

    g = torch.Generator().manual_seed(7)
    w = {"enc.layer.0.w": torch.randn(4, 5, generator=g), "enc.layer.1.w": torch.randn(3, 4, generator=g)}
    fd = {n: torch.rand(t.shape, generator=g) * 0.3 for n, t in w.items()}
    fg = {n: torch.rand(t.shape, generator=g) * 0.1 for n, t in w.items()}
    gd = {n: torch.randn(t.shape, generator=g) for n, t in w.items()}
    gg = {n: torch.randn(t.shape, generator=g) for n, t in w.items()}
    # layer 1: no Fisher signal and c = 0 → every importance is softplus(0): the rescue orders it by |w|
    fd["enc.layer.1.w"] = fg["enc.layer.1.w"] = torch.zeros(3, 4)
    w["enc.layer.1.w"][0, 0] = 5.0  # the largest weight: the rescue must rank it highest
    stats = GradStats(fd, fg, gd, gg)
    params = {n: torch.nn.Parameter(t) for n, t in w.items()}
    for alpha, fbeta in ((0.0, 1.0), (2.0, 0.5)):
        got = score_weights("dai", params, stats, {"postproc": post, "fusion_alpha": alpha, "fusion_beta": fbeta,
                                                   "smooth": False, "c": 0.0})
        for n, t in w.items():
            flat_w = t.flatten().tolist()
            a = (gg[n] / gg[n].norm() * gd[n] / gd[n].norm()).flatten().tolist()
            raw = []
            for j, wj in enumerate(flat_w):
                m = abs(wj)
                factor = min(1.2, max(0.8, 1 + 0.2 * a[j]))
                x = (float(fd[n].flatten()[j]) - float(fg[n].flatten()[j])) * m * factor  # c = 0
                raw.append(math.log1p(math.exp(x)))
            mean_r = sum(raw) / len(raw)
            if math.sqrt(sum((r - mean_r) ** 2 for r in raw) / (len(raw) - 1)) < 1e-6:
                mean_m = sum(abs(v) for v in flat_w) / len(flat_w)
                raw = [r * (0.5 + 0.5 * abs(v) / (mean_m + 1e-8)) for r, v in zip(raw, flat_w)]
                assert n == "enc.layer.1.w"
            ref = _reference_postproc(raw, post)
            if alpha != 0.0 or fbeta != 1.0:
                ref = [alpha * float(fd[n].flatten()[j]) * abs(flat_w[j]) + fbeta * r for j, r in enumerate(ref)]
            assert got[n].flatten().tolist() == pytest.approx(ref, rel=1e-4, abs=1e-6)
        assert int(got["enc.layer.1.w"].argmax()) == 0
    # without the rescue the flat tensor has no order at all
    off = score_weights("dai", params, stats, {"rescue": False, "postproc": "minmax", "c": 0.0})
    assert float(off["enc.layer.1.w"].abs().max()) == 0.0
    with pytest.raises(ConfigError, match="postproc"):
        score_weights("dai", params, stats, {"postproc": "softmax"})


@pytest.mark.parametrize("budget", ["per_layer", "per_tensor"])
def test_per_group_clamps_rho_min_max(budget):
    g = torch.Generator().manual_seed(4)
    scores = {f"enc.layer.{i}.w": torch.rand(10, 10, generator=g) + i for i in range(3)}
    for sp, expect in ((0.98, 95), (0.02, 5), (0.5, 50)):  # floor(0.95·100), floor(0.05·100), unclamped
        masks = masks_from_scores(scores, sp, budget)
        for n, m in masks.items():
            assert int((~m).sum()) == expect
            assert scores[n][~m].max() <= scores[n][m].min()
    masks = masks_from_scores(scores, 0.98, budget, rho_min=0.0, rho_max=1.0)
    assert all(int((~m).sum()) == 98 for m in masks.values())
    glob = masks_from_scores(scores, 0.02, "global")  # no clamp globally: the lowest layer takes all 6 prunings
    assert int((~glob["enc.layer.0.w"]).sum()) == 6 and int((~glob["enc.layer.2.w"]).sum()) == 0
    with pytest.raises(ConfigError, match="rho_min"):
        masks_from_scores(scores, 0.5, budget, rho_min=0.9, rho_max=0.1)


def test_retraining_holds_the_mask_and_learns(model, triplets):
    params = candidate_params(model, "mlp")
    masks = masks_from_scores(score_weights("magnitude", params, None), 0.5)
    train = triplets.where("domain", "train")
    with torch.no_grad():
        before = float(triplet_loss(model, train, 20.0, 32))
    losses = train_embedding(model, train, {"steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.1,
                                            "weight_decay": 0.1, "max_seq_len": 32}, seed=0, masks=masks)
    assert len(losses) == 30
    realized = sparsity_of(model, list(masks))
    for n, m in masks.items():
        p = dict(model.named_parameters())[n]
        assert torch.all(p[~m] == 0)  # pruned weights stay exactly zero despite AdamW and weight decay
        assert realized[n] >= float((~m).float().mean())
    model.eval()
    with torch.no_grad():
        after = float(triplet_loss(model, train, 20.0, 32))
    assert after < before


def test_saved_model_loads_in_transformers_and_sentence_transformers(model, tmp_path):
    params = candidate_params(model, "mlp")
    from datasel.pruning import apply_masks

    apply_masks(model, masks_from_scores(score_weights("random", params, None, seed=1), 0.5))
    out = save_embedding_model(model, tmp_path / "pruned")
    texts = ["def add(a, b): return a + b", "a sentence about nothing"]
    ref = model.encode(texts)
    back = load_embedding_model(str(out), 32, "cpu")
    torch.testing.assert_close(back.encode(texts), ref, rtol=1e-5, atol=1e-6)
    assert sparsity_of(back, list(params)) == sparsity_of(model, list(params))
    st = pytest.importorskip("sentence_transformers")
    emb = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(emb.float().cpu(), ref, rtol=1e-4, atol=1e-5)


def test_run_one_end_to_end(triplets, tmp_path):
    cfg = {"model": "tiny-random-bert", "max_seq_len": 32, "device": "cpu", "fisher": {"batch_size": 8},
           "retrain": {"steps": 3, "batch_size": 8}, "save_models": ["dai"]}
    from datasel.pruning.pipeline import compute_stats, load_model

    stats = compute_stats(load_model(cfg), triplets, cfg, 0)
    out = run_one(cfg, triplets, stats, "dai", 0.5, 0, tmp_path / "run")
    df = pl.DataFrame(out["metrics"])
    write_table(df, tmp_path / "m.parquet", "metrics")
    assert set(df["selection"]) == {"dai_s50_oneshot", "dai_s50_retrained"}
    assert set(df["split"]) == {"domain", "general"} and set(df["metric"]) == {"ndcg@10", "mrr@10", "recall@10"}
    ps = pl.DataFrame(out["param_scores"])
    write_table(ps, tmp_path / "p.parquet", "param_scores")
    realized = float((ps["sparsity"] * ps["numel"]).sum() / ps["numel"].sum())
    assert realized == pytest.approx(0.5, abs=1e-3)
    assert ps["conflict_rate"].is_between(0, 1).all() and ps["cos_general_domain"].abs().max() <= 1
    assert (tmp_path / "run" / "model" / "modules.json").exists() and (tmp_path / "run" / "mask.npz").exists()
    # deterministic given the seed
    again = run_one(cfg, triplets, stats, "dai", 0.5, 0)
    assert [r["value"] for r in again["metrics"]] == [r["value"] for r in out["metrics"]]


def test_example_scores_match_slow_reference(model, triplets):
    params = candidate_params(model, "mlp")
    dom = triplets.where("domain", "train")
    stats = gradient_statistics(model, dom, triplets.where("general", "train"), params,
                                {"batch_size": 8, "max_seq_len": 32}, seed=0)
    sub = dom.subset(range(5))
    got = example_scores(model, sub, stats, 20.0, 32, chunk_size=2)
    names = sorted(params)
    w = {n: stats.fisher_domain[n] / torch.cat([stats.fisher_domain[m].flatten() for m in names]).mean() for n in names}
    for i in range(5):
        one = sub.subset([i])
        enc = [model.tokenize(t, 32) for t in (one.query, one.positive, one.negative)]
        # padding to max_length in the scorer vs. to the longest here: mean pooling ignores padding either way
        q, p, n = (model(**e) for e in enc)
        logits = torch.stack([(q * p).sum(-1), (q * n).sum(-1)], -1) * 20
        g = torch.autograd.grad(F.cross_entropy(logits, torch.zeros(1, dtype=torch.long)), [params[n] for n in names])
        num = sum((w[n] * gi * stats.grad_general[n]).sum() for n, gi in zip(names, g))
        den = torch.sqrt(sum((w[n] * gi**2).sum() for n, gi in zip(names, g))) * torch.sqrt(
            sum((w[n] * stats.grad_general[n] ** 2).sum() for n in names))
        assert float(got[i]) == pytest.approx(float(num / den), abs=1e-4)
    assert got.abs().max() <= 1 + 1e-6
