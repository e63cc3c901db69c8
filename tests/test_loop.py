"""The one supervised loop (datasel.training.loop): schedules, budgets, hooks and seeding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.training.loop import LoopSettings, lr_factor, train_loop, weighted_mean


def _problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(40, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(3, 1), x, y


def _epochs(n: int, bs: int):
    return lambda epoch, gen: torch.randperm(n, generator=gen).split(bs)


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0):
    return lambda i: ((model(x[i]).squeeze(1) - y[i]) ** 2).mean() * scale


def _lrs(settings: LoopSettings) -> list[float]:
    """The LR each step ran at."""
    model, x, y = _problem()
    seen: list[float] = []
    train_loop(model, _mse(model, x, y), _epochs(40, 8), settings, 0, on_gradients=lambda st: seen.append(st.lr))
    return seen


def test_lr_schedules_follow_their_formulas():
    lrs = {schedule: _lrs(LoopSettings(steps=10, optimizer="sgd", lr=0.5, momentum=0.0, schedule=schedule,
                                       warmup_steps=3)) for schedule in ("constant", "cosine", "linear")}
    warm = [0.5 * (s + 1) / 3 for s in range(3)]
    assert lrs["constant"] == pytest.approx(warm + [0.5] * 7)
    assert lrs["linear"] == pytest.approx(warm + [0.5 * (10 - s) / 7 for s in range(3, 10)])
    assert lrs["cosine"] == pytest.approx(warm + [0.25 * (1 + math.cos(math.pi * (s - 3) / 7)) for s in range(3, 10)])
    assert lr_factor(9, LoopSettings(steps=10, schedule="linear")) == pytest.approx(0.1)


def test_cosine_without_warmup_is_torchs_cosine_annealing():
    seen = _lrs(LoopSettings(steps=7, optimizer="sgd", lr=0.3, momentum=0.0, schedule="cosine"))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    want = []
    for _ in range(7):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert seen == want  # the same recurrence, to the bit


def test_budget_epochs_hooks_and_plain_sgd_reference():
    """Plain SGD through the loop equals a hand-written loop over the same seeded permutations."""
    model, x, y = _problem()
    ref = nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    s = LoopSettings(steps=12, optimizer="sgd", lr=0.05, momentum=0.0, schedule="constant")
    epochs: list[int] = []
    res = train_loop(model, _mse(model, x, y), _epochs(40, 16), s, 5,
                     on_epoch=lambda st: epochs.append(st.epoch))
    assert res.steps == 12 and len(res.losses) == 12
    assert epochs == [0, 1, 2, 3, 4]  # 3 batches an epoch: 4 epochs, the last one cut short, each ending a hook
    gen, step, losses = torch.Generator().manual_seed(5), 0, []
    while step < 12:
        for i in torch.randperm(40, generator=gen).split(16):
            loss = ((ref(x[i]).squeeze(1) - y[i]) ** 2).mean()
            ref.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in ref.parameters():
                    p -= 0.05 * p.grad
            losses.append(float(loss.detach()))
            step += 1
            if step == 12:
                break
    assert res.losses == pytest.approx(losses, rel=1e-6)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not model.training


def test_gradient_hook_and_clipping():
    model, x, y = _problem()
    s = LoopSettings(steps=3, optimizer="sgd", lr=0.1, momentum=0.0, schedule="constant", max_grad_norm=1e-3)
    before = model.weight.detach().clone()

    def freeze_first(state) -> None:
        model.weight.grad[0, 0] = 0.0

    train_loop(model, _mse(model, x, y, 100.0), _epochs(40, 8), s, 0, on_gradients=freeze_first)
    assert model.weight[0, 0] == before[0, 0]
    # clipped to norm 1e-3 per step at lr 0.1: no weight moves by more than 3 × 1e-4
    assert (model.weight - before).abs().max() <= 3e-4 + 1e-9


def test_weighted_mean_and_refusals():
    v = torch.tensor([1.0, 2.0, 6.0])
    assert float(weighted_mean(v)) == 3.0
    assert float(weighted_mean(v, torch.tensor([1.0, 0.0, 1.0]))) == 3.5
    with pytest.raises(ConfigError, match="schedule"):
        LoopSettings(steps=1, schedule="step")
    with pytest.raises(ConfigError, match="optimizer"):
        LoopSettings.from_cfg({"optimizer": "lion"}, 3, where="dga.train")
    model, x, y = _problem()
    with pytest.raises(ConfigError, match="no batch"):
        train_loop(model, lambda i: model(x[i]).sum(), lambda e, g: iter(()), LoopSettings(steps=2), 0)


def test_from_cfg_warmup_ratio_and_defaults():
    s = LoopSettings.from_cfg({"lr": 0.01, "warmup_ratio": 0.25}, 20, optimizer="adamw", weight_decay=0.1)
    assert (s.optimizer, s.lr, s.weight_decay, s.warmup_steps, s.schedule) == ("adamw", 0.01, 0.1, 5, "cosine")
    assert LoopSettings.from_cfg({"warmup_steps": 2, "warmup_ratio": 0.5}, 20).warmup_steps == 2


def test_train_classifier_equals_the_plain_adam_cosine_loop():
    """train_classifier on the loop = a hand-written Adam + CosineAnnealingLR loop over the same seeded
    permutations, with selection weights, to the bit (on the CPU)."""
    from datasel.training.classify import train_classifier

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    w = torch.linspace(0.2, 1.0, 30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ref.load_state_dict(model.state_dict())
    cfg = {"batch_size": 8, "lr": 0.01, "budget": {"unit": "epochs", "value": 3}}
    train_classifier(model, x, y, cfg, seed=4, weights=w)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        for i in torch.randperm(30, generator=gen).split(8):
            per = torch.nn.functional.cross_entropy(ref(x[i]), y[i], reduction="none")
            loss = (per * w[i]).sum() / w[i].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
