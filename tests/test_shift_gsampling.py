"""Shift-Gsampling: the drop, the Gaussian law over percentiles, sampling without replacement, seeding, errors."""

from __future__ import annotations

import itertools
import math
import os

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasel.errors import ConfigError
from datasel.selection import POLICIES
from datasel.selection.shift_gsampling import percentiles, shift_gsample

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)


def _pool(n: int) -> pl.DataFrame:
    # score falls with the index, so best-first position == index
    return pl.DataFrame(
        {
            "example_id": [f"ex{i:05d}" for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "score": [float(n - i) for i in range(n)],
            "rank": list(range(1, n + 1)),
        }
    )


def test_percentiles_span_zero_to_one():
    w = percentiles(5)
    assert w.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert percentiles(1).tolist() == [0.0]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    frac=st.floats(0.01, 1.0),
    drop=st.floats(0.0, 0.99),
    mu=st.floats(0.0, 1.0),
    sigma=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_kept_rows_unique_in_budget_and_never_in_dropped_head(n, frac, drop, mu, sigma, seed):
    n_keep = max(1, round(n * frac))
    w = percentiles(n)
    available = int((w >= drop - 1e-12).sum())
    if n_keep > available:
        with pytest.raises(ConfigError) as err:
            shift_gsample(n, n_keep, drop, mu, sigma, seed)
        assert err.value.field.endswith("drop_top")
        return
    pos = shift_gsample(n, n_keep, drop, mu, sigma, seed)
    assert pos.numel() == n_keep
    assert len(set(pos.tolist())) == n_keep  # without replacement
    assert bool((w[pos] >= drop - 1e-12).all())  # the top drop share is never kept


def test_single_draw_follows_the_gaussian_law_over_the_remaining_rows():
    n, drop, mu, sigma = 11, 0.2, 0.5, 0.15
    w = percentiles(n)
    p = torch.exp(-((w - mu) ** 2) / (2 * sigma**2)) * (w >= drop)
    p = p / p.sum()
    trials = 20000
    counts = torch.zeros(n)
    for s in range(trials):
        counts[shift_gsample(n, 1, drop, mu, sigma, seed=s)] += 1
    freq = counts / trials
    assert counts[:2].sum() == 0  # percentiles 0.0 and 0.1 are dropped
    # binomial standard error is at most 0.0036 here; 5 SE is a loose but meaningful bound
    assert torch.allclose(freq, p.float(), atol=0.018), (freq, p)


def test_two_draws_match_sequential_sampling_without_replacement():
    """Gumbel-top-k must equal 'draw one ∝ p, remove it, draw again ∝ p' — computed here exactly by enumeration."""
    n, drop, mu, sigma = 6, 0.0, 0.3, 0.25
    w = percentiles(n)
    p = torch.exp(-((w - mu) ** 2) / (2 * sigma**2)).double()
    p = p / p.sum()
    exact = {}
    for a, b in itertools.permutations(range(n), 2):
        exact[frozenset((a, b))] = exact.get(frozenset((a, b)), 0.0) + float(p[a] * p[b] / (1 - p[a]))
    trials = 15000
    counts: dict[frozenset, int] = {}
    for s in range(trials):
        key = frozenset(shift_gsample(n, 2, drop, mu, sigma, seed=s).tolist())
        counts[key] = counts.get(key, 0) + 1
    for key, prob in exact.items():
        se = math.sqrt(prob * (1 - prob) / trials)
        got = counts.get(key, 0) / trials
        assert abs(got - prob) < 5 * se + 1e-3, (sorted(key), got, prob)


def test_kept_band_centres_on_mu():
    n = 2000
    w = percentiles(n)
    for mu in (0.3, 0.5, 0.7):
        pos = shift_gsample(n, 200, 0.1, mu, 0.05, seed=1)
        assert abs(float(w[pos].mean()) - mu) < 0.02


def test_seeded_and_seed_sensitive():
    a = shift_gsample(500, 100, 0.1, 0.5, 0.15, seed=7)
    b = shift_gsample(500, 100, 0.1, 0.5, 0.15, seed=7)
    c = shift_gsample(500, 100, 0.1, 0.5, 0.15, seed=8)
    assert torch.equal(a, b)
    assert set(a.tolist()) != set(c.tolist())


def test_tiny_sigma_does_not_underflow():
    pos = shift_gsample(1000, 10, 0.0, 0.5, 1e-6, seed=0)
    # all mass on the rows nearest percentile 0.5: with probabilities this peaked they are taken nearest-first
    assert sorted(pos.tolist()) == list(range(495, 505))


@pytest.mark.parametrize(
    "kw, field",
    [({"drop": 1.0}, "drop_top"), ({"drop": -0.1}, "drop_top"), ({"mu": 1.5}, "mu"), ({"sigma": 0.0}, "sigma")],
)
def test_bad_knobs_name_their_field(kw, field):
    args = {"drop": 0.1, "mu": 0.5, "sigma": 0.15, **kw}
    with pytest.raises(ConfigError) as err:
        shift_gsample(100, 10, args["drop"], args["mu"], args["sigma"], seed=0)
    assert err.value.field.endswith(field)
    assert err.value.fix


def test_budget_beyond_what_remains_is_refused_with_a_fix():
    with pytest.raises(ConfigError) as err:
        POLICIES.get("shift_gsampling")({"drop_top": 0.6}).choose(_pool(100), 50, seed=0)
    assert "drop_top" in err.value.field and "0.5" in err.value.fix


def test_policy_returns_ids_and_unit_weights_independent_of_pool_row_order():
    policy = POLICIES.get("shift_gsampling")({"drop_top": 0.1, "mu": 0.5, "sigma": 0.15})
    pool = _pool(300)
    out = policy.choose(pool, 60, seed=3)
    assert out.columns[:2] == ["example_id", "weight"]
    assert out.height == 60 and out.get_column("example_id").n_unique() == 60
    assert set(out.get_column("example_id")) <= set(pool.get_column("example_id"))
    assert (out.get_column("weight") == 1.0).all()
    idx = sorted(int(e[2:]) for e in out.get_column("example_id"))
    assert min(idx) >= 30  # the top 10% (ids 0..29) are dropped
    shuffled = pool.sample(fraction=1.0, shuffle=True, seed=0)
    again = policy.choose(shuffled, 60, seed=3)
    assert again.get_column("example_id").to_list() == out.get_column("example_id").to_list()


def test_defaults_and_any_score():
    """Works on any score table (here a negated, shifted score) and with the documented defaults."""
    pool = _pool(200).with_columns((-pl.col("score") * 3.0 + 1.0).alias("score"))
    out = POLICIES.get("shift_gsampling")({}).choose(pool, 50, seed=0)
    idx = [int(e[2:]) for e in out.get_column("example_id")]
    # score is now increasing in the index, so the best rows are the high ids; the top 10% (ids 180..199) go
    assert max(idx) < 180
