"""The per-layer gradient path: exact against one autograd pass per example, and chosen only where it is exact."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import per_example_reference
from torch import nn

from datasel.errors import ConfigError
from datasel.features.compute import cross_entropy
from datasel.features.grads import PerSampleGrads, per_sample_grad_norms, per_sample_grads, select_params
from datasel.features.layer_grads import LayerGrads, Unsupported, _unfold
from datasel.models import build_model

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)
META = {"input_dim": 40, "num_classes": 10}


def _data(n: int = 13, shape: tuple[int, ...] = (40,)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


class Conv2dNet(nn.Module):
    """Strided, dilated, padded 2-D convolution with an in-place ReLU right after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 3 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x.reshape(-1, 2, 5, 4))).flatten(1))


class SequenceNet(nn.Module):
    """A Linear over token positions (3-D input), a Linear called twice (shared weights), and an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Linear(5, 6)
        self.shared = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.tok(x.reshape(-1, 8, 5)))
        h = self.shared(torch.relu(self.shared(h)))
        return self.head(h.mean(1))


CASES = {
    "mlp": (lambda: build_model({"name": "mlp", "hidden": [16, 12]}, META), (40,)),
    "cnn1d": (lambda: build_model({"name": "cnn1d", "channels": 6}, META), (40,)),
    "conv2d": (Conv2dNet, (40,)),
    "sequence": (SequenceNet, (40,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layer_path_matches_reference_float64(case: str) -> None:
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build().double().eval()
    x, y = _data(13, shape)
    names = list(select_params(model, "all"))
    ref = per_example_reference(model, x, y, names)
    comp = PerSampleGrads(model, cross_entropy, "all", mode="layers")
    # chunks of 5 leave a tail of 3: the reused buffers must not leak rows between chunks
    got = torch.cat([comp(x[s : s + 5], y[s : s + 5]) for s in range(0, 13, 5)])
    assert ((got - ref).norm() / ref.norm()).item() < 1e-10
    assert ref.norm(dim=1).min() > 0
    # layer outputs are copied only where a forward pass rewrites one in place (conv2d's ReLU(inplace=True))
    assert comp._layers._clone_outputs == (case == "conv2d")
    if case == "sequence":  # the unused layer's columns are exactly zero, the shared layer's are not
        bounds, col = {}, 0
        for n, p in select_params(model, "all").items():
            bounds[n], col = (col, col + p.numel()), col + p.numel()
        start, stop = bounds["unused.weight"][0], bounds["unused.bias"][1]
        assert got[:, start:stop].abs().max() == 0
        assert got[:, bounds["shared.weight"][0] : bounds["shared.weight"][1]].abs().max() > 0


@pytest.mark.parametrize("case", ["cnn1d", "conv2d", "sequence"])
def test_large_layer_products_into_the_output(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers past SMALL_ITEM take the batched product straight into the output view: the same gradients."""
    import datasel.features.layer_grads as lg

    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build().double().eval()
    x, y = _data(7, shape)
    ref = per_example_reference(model, x, y, list(select_params(model, "all")))
    monkeypatch.setattr(lg, "SMALL_ITEM", 0)
    got = PerSampleGrads(model, cross_entropy, "all", mode="layers")(x, y)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-10


@pytest.mark.parametrize("mod, shape", [
    (nn.Conv1d(3, 4, 5, stride=2, padding=1), (2, 3, 17)),
    (nn.Conv1d(1, 4, 5, stride=2, padding=1), (2, 1, 40)),  # one channel: the default CNN's first layer
    (nn.Conv1d(3, 4, 3, padding=2, dilation=3), (2, 3, 20)),
    (nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (2, 3, 9, 8)),
    (nn.Conv2d(2, 4, 3), (1, 2, 5, 6)),
])
def test_windows_match_torch_unfold(mod: nn.Module, shape: tuple[int, ...]) -> None:
    """The strided-view windows equal F.unfold's im2col (stride, padding, dilation, non-square kernels)."""
    a = torch.randn(shape)
    if isinstance(mod, nn.Conv1d):
        ref = F.unfold(a.unsqueeze(2), (1, mod.kernel_size[0]), dilation=(1, mod.dilation[0]),
                       padding=(0, mod.padding[0]), stride=(1, mod.stride[0]))
    else:
        ref = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
    got = _unfold(mod, a)
    assert got.is_contiguous()
    assert torch.equal(got, ref.transpose(1, 2))


def test_parameter_subsets_and_norms() -> None:
    torch.manual_seed(1)
    model = build_model({"name": "cnn1d", "channels": 6}, META).double().eval()
    x, y = _data(9)
    for spec in (["body.2.bias", "head.weight"], "last_layer"):
        names = list(select_params(model, spec))
        got = per_sample_grads(model, x, y, cross_entropy, spec, chunk_size=4, mode="layers")
        assert torch.allclose(got, per_example_reference(model, x, y, names), rtol=1e-10, atol=1e-12)
    norms = per_sample_grad_norms(model, x, y, cross_entropy, "all", chunk_size=4)
    ref = per_example_reference(model, x, y, list(select_params(model, "all"))).norm(dim=1)
    assert torch.allclose(norms, ref, rtol=1e-10)


def test_lora_adapters_use_the_layer_path() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = build_model({"name": "mlp", "hidden": [16]}, META).double()
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["body.0"], lora_dropout=0.0)).eval()
    x, y = _data(8)
    comp = PerSampleGrads(model, cross_entropy, "lora", mode="auto")
    got = comp(x, y)
    assert comp.mode == "layers"
    loop = per_sample_grads(model, x, y, cross_entropy, "lora", 3, mode="loop")
    assert ((got - loop).norm() / loop.norm()).item() < 1e-10


def test_auto_prefers_layers_and_matches_vmap() -> None:
    torch.manual_seed(2)
    model = build_model({"name": "cnn1d", "channels": 6}, META).double().eval()
    x, y = _data(10)
    comp = PerSampleGrads(model, cross_entropy, "all", mode="auto")
    got = comp(x, y)
    assert comp.mode == "layers"
    assert torch.allclose(got, per_sample_grads(model, x, y, cross_entropy, "all", 10, mode="vmap"), rtol=1e-9)


class BatchCentered(nn.Module):
    """Subtracts the batch mean: examples interact, so one batched backward does not give per-example gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return h - h.mean(0, keepdim=True) if h.shape[0] > 1 else h


class TailCoupled(nn.Module):
    """Couples only the rows after the fourth (centres them on their own mean): the leading rows look independent."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if h.shape[0] <= 4:
            return h
        return torch.cat([h[:4], h[4:] - h[4:].mean(0, keepdim=True)])


class Untraceable(nn.Module):
    """Data-dependent Python control flow, which vmap refuses, and a bare parameter, which the layer path refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(40, 10)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:  # .item() cannot run under vmap
            return self.scale * self.lin(x)
        return self.scale * self.lin(-x)


@pytest.mark.parametrize("model_cls, mode, message", [
    (BatchCentered, "vmap", "interact inside a batch"),
    (TailCoupled, "vmap", "interact inside a batch"),  # invisible on rows 0-1; the spread check catches it
    (Untraceable, "loop", "vmap cannot trace Untraceable"),
])
def test_auto_steps_down_with_logged_reason(model_cls: type, mode: str, message: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(3)
    model = model_cls().double()
    x, y = _data(6)
    comp = PerSampleGrads(model, cross_entropy, "all", mode="auto")
    with caplog.at_level(logging.WARNING):
        got = comp(x, y)
    assert comp.mode == mode
    assert any(message in r.message for r in caplog.records)
    assert torch.allclose(got, per_example_reference(model, x, y, list(select_params(model, "all"))), rtol=1e-9)


def test_unsupported_models_and_losses() -> None:
    torch.manual_seed(5)
    bn = nn.Sequential(nn.Linear(40, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)).double()
    with pytest.raises(Unsupported, match="batch norm in training mode"):
        LayerGrads(bn, select_params(bn, "all"), cross_entropy)
    with pytest.raises(Unsupported, match="BatchNorm1d"):  # eval mode: no coupling, but BN's own parameters
        LayerGrads(bn.eval(), select_params(bn, "all"), cross_entropy)
    LayerGrads(bn, select_params(bn, ["0.*", "2.*"]), cross_entropy)  # eval BN with Linear params only: fine
    mlp = build_model({"name": "mlp", "hidden": [8]}, META)
    summed = lambda out, y: nn.functional.cross_entropy(out, y, reduction="sum")  # noqa: E731
    with pytest.raises(Unsupported, match="per-example mean"):
        LayerGrads(mlp, select_params(mlp, "all"), summed)
    with pytest.raises(ConfigError, match="mode 'layers' cannot run"):
        PerSampleGrads(mlp, summed, "all", mode="layers")
    grouped = nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(72, 10))
    with pytest.raises(Unsupported, match="grouped"):
        LayerGrads(grouped, select_params(grouped, "all"), cross_entropy)
    x, y = _data(4)
    comp = PerSampleGrads(mlp.double(), summed, "all", mode="auto")  # not a mean: the layer path is skipped
    comp(x, y)
    assert comp.mode == "vmap"
