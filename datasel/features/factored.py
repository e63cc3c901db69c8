"""Factored projection of per-example gradients: never build the D-dim gradient of a Linear/Conv layer.

A Linear/Conv layer's per-example weight gradient is ``G = Σ_t g_t a_tᵀ`` (``g_t`` the gradient at the layer output,
``a_t`` its input, ``t`` over positions). With seeded random ``P_out`` (k_out × fan_out) and ``P_in`` (k_in × fan_in),
each scaled by 1/sqrt(rows), ``P_out G P_inᵀ = Σ_t (P_out g_t)(P_in a_t)ᵀ`` is a JL sketch of ``vec(G)`` by the
Kronecker matrix ``P_out ⊗ P_in`` (LoGra, Choe et al. 2024), computed from the two small sides. A layer's bias
gradient ``Σ_t g_t`` goes through ``P_out``. Two stages: the per-layer sketches are concatenated (``m`` dims) and a
seeded projection takes them to ``k`` (``factor_stage2``: sparse by default; after the first stage the coordinates
are already mixed, so CountSketch loses little against a dense m×k matrix and costs O(m) instead of O(m·k)).

The per-layer sketch size is ``factor_dim``: a fixed ``k_out·k_in`` for every layer, or ``auto`` (the default):
an eighth of the layer's weight count, between 256 and 16,384. Why by size: a small layer's sketch costs about as
much as its exact gradient and a wide one's sketch dominates the error of the whole map, so one fixed size is either
slow on small models (the 8k-parameter CNN of the default config) or coarse on large ones (a 1000×1000 Linear);
``benchmarks/features.py`` times both. The budget split is the knob ``factor_out_share``: per layer,
``k_out = layer_dim ** share`` (capped at fan_out, which is then kept exact) and ``k_in = layer_dim / k_out``.
Where activations of different examples are strongly correlated (a shared mean direction) the input side needs
few dimensions and the output-gradient side most of them; where they are not (the MLP of
``benchmarks/features.py`` on whitened inputs) an even split (0.5, the default) is better.

Parameters that are not a Linear/Conv weight or bias (layer norms, embeddings, ...) are projected from their
flattened per-example gradients by a dense or sparse projector (``factor_rest``), added to the output, which makes
the whole map one block matrix ``[P_2 · K ; P_rest]``: a JL map of the full gradient. On the first chunk the tapped
path is checked against the per-example loop projected by the same matrices; if it disagrees or does not apply,
every chunk takes the flattened gradient and :meth:`FactoredProjector.project` (the same map, exactly).

``factor_basis: pca`` replaces the random sides by the gradients' own principal directions, ``factor_rank`` per
side, fitted on given rows (:mod:`datasel.features.pca_basis`), and the second stage by keeping the ``k`` stage-1
coordinates of most energy: no random map of the result, so no JL noise. It is the more accurate and, at k = 512,
the faster map in ``benchmarks/features.py``, but its inner products are biased low by the energy it leaves out,
which moves cosine thresholds (``dedup``) and magnitudes, so it is opt-in.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError
from datasel.features.grads import Inputs, PerSampleGrads, _call, agreement_tol, batch_len, slice_inputs
from datasel.features.layer_grads import LayerGrads, Unsupported, _check_module, _outer_sum, _owner, _unfold
from datasel.features.pca_basis import SideMoments, keep_columns, top_directions
from datasel.features.projectors import (
    AdamPreconditioner,
    Projector,
    block_seed,
    make_flat_projector,
    random_matrix,
)

log = logging.getLogger(__name__)

BASES = ("random", "pca")
CHECK_ROWS = 2  # rows of the first chunk checked against the per-example loop (as PerSampleGrads checks its layers)
AUTO_DIVISOR, AUTO_MIN, AUTO_MAX = 8, 256, 16384  # factor_dim: auto = clamp(weight count / 8, 256, 16384) per layer
# per-example gradients of one group of same-shaped layers formed at once by the preconditioned path (bytes)
GROUP_BYTES = 64 << 20


def layer_budget(factor_dim: int | str, numel: int) -> int:
    """The sketch size ``k_out·k_in`` of a layer with ``numel`` weights under ``factor_dim`` (a size or ``auto``)."""
    if factor_dim == "auto":
        return min(AUTO_MAX, max(AUTO_MIN, numel // AUTO_DIVISOR))
    return int(factor_dim)


@dataclass
class _Layer:
    """One factorable module: its chosen weight/bias columns in the flat gradient and its slots in the sketch."""

    path: str
    fan_out: int
    fan_in: int
    k_out: int
    k_in: int
    p_out: torch.Tensor | None  # (k_out, fan_out), orthonormal rows or scaled random; None: the side is kept exact
    p_in: torch.Tensor | None
    weight_cols: tuple[int, int] | None = None  # (start, numel) in the flat gradient
    bias_cols: tuple[int, int] | None = None
    weight_mid: int = -1  # start in the stage-1 sketch
    bias_mid: int = -1


@dataclass
class _Group:
    """Layers of one shape whose preconditioned gradients are formed and projected together: the flat-gradient
    columns of their entries (broadcasting over the rows), their stacked sketch sides, and their slots in ``mid``."""

    layers: list[_Layer]
    weight_cols: torch.Tensor | None  # (n, 1, fan_out, fan_in)
    bias_cols: torch.Tensor | None  # (n, 1, fan_out)
    p_out: torch.Tensor | None  # (n, 1, k_out, fan_out)
    p_in_t: torch.Tensor | None  # (n, 1, fan_in, k_in)
    weight_mid: torch.Tensor | None  # (n · k_out · k_in,) columns of mid, layer by layer
    bias_mid: torch.Tensor | None

    @classmethod
    def of(cls, layers: list[_Layer], dtype: torch.dtype, device: torch.device) -> _Group:
        first = layers[0]

        def cols(which: str, shape: tuple[int, ...]) -> torch.Tensor | None:
            if getattr(first, which) is None:
                return None
            return torch.stack([torch.arange(getattr(lay, which)[0], getattr(lay, which)[0] + math.prod(shape))
                                .view(1, *shape) for lay in layers]).to(device)

        def slots(start: str, width: int) -> torch.Tensor:
            return torch.cat([torch.arange(getattr(lay, start), getattr(lay, start) + width)
                              for lay in layers]).to(device)

        return cls(
            layers,
            cols("weight_cols", (first.fan_out, first.fan_in)),
            cols("bias_cols", (first.fan_out,)),
            (torch.stack([lay.p_out for lay in layers]).unsqueeze(1).to(device, dtype)
             if first.p_out is not None else None),
            (torch.stack([lay.p_in.T for lay in layers]).unsqueeze(1).to(device, dtype)
             if first.p_in is not None else None),
            slots("weight_mid", first.k_out * first.k_in) if first.weight_cols is not None else None,
            slots("bias_mid", first.k_out) if first.bias_cols is not None else None,
        )


def side_dims(fan_out: int, fan_in: int, layer_dim: int, out_share: float) -> tuple[int, int]:
    """(k_out, k_in) of one layer's sketch: ``layer_dim ** out_share`` rows for the output side, the rest of the
    budget for the input side, each capped at its fan (a side at its fan is kept exact, and what a capped input side
    leaves goes back to the output side); a layer with at most ``layer_dim`` weights is kept whole."""
    if fan_out * fan_in <= layer_dim:  # the whole layer fits: its exact gradient is the cheapest "sketch"
        return fan_out, fan_in
    k_out = min(fan_out, max(1, round(layer_dim ** out_share)))
    k_in = min(fan_in, max(1, layer_dim // k_out))
    if k_in == fan_in:  # a narrow input side is kept exact; what it leaves of the budget goes to the output side
        k_out = min(fan_out, max(k_out, layer_dim // k_in))
    return k_out, k_in


class FactoredProjector(Projector):
    """Per-layer Kronecker sketches, then a dense projection to ``dim_out``; other parameters by ``rest``."""

    def __init__(self, comp: PerSampleGrads, dim_out: int, *, kind: str = "rademacher", seed: int = 0,
                 layer_dim: int | str = "auto", out_share: float = 0.5, rest: str = "sparse", sparse_nnz: int = 1,
                 stage2: str = "sparse", device: str | torch.device = "cpu", block_rows: int = 4096, cache_mb: float = 256.0,
                 basis: str = "random", rank: int = 16) -> None:
        if basis not in BASES:
            raise ConfigError(f"factor_basis {basis!r} is not one of {BASES}", field="features.factor_basis",
                              fix="use random (seeded sketches) or pca (fitted to the gradients of training rows)")
        if not 0.0 <= out_share <= 1.0:
            raise ConfigError(f"factor_out_share {out_share} is not in [0, 1]", field="features.factor_out_share",
                              fix="use a share between 0 (all to the input side) and 1 (all to the output side)")
        layer_dim = _factor_dim(layer_dim)
        self.comp, self.model, self.loss_fn = comp, comp.model, comp.loss_fn
        self.dim_in, self.dim_out, self.kind, self.seed = comp.dim, int(dim_out), kind, int(seed)
        self.layer_dim, self.out_share, self.rest_kind = layer_dim, float(out_share), rest
        self.basis, self.rank = basis, int(rank)
        self.fitted_rows = 0
        self.energy_share = 1.0  # pca: the share of the fitted rows' squared gradient norm the features keep
        self._keep: torch.Tensor | None = None
        self.device = torch.device(device)
        self.layers: dict[str, _Layer] = {}
        self.rest_names: list[str] = []
        self.rest_cols: list[tuple[int, int]] = []
        col = 0
        for name, p in comp.params.items():
            mod, path, attr = _owner(self.model, name)
            try:
                _check_module(mod, path, attr)
            except Unsupported:
                self.rest_names.append(name)
                self.rest_cols.append((col, p.numel()))
                col += p.numel()
                continue
            layer = self.layers.get(path)
            if layer is None:
                layer = self.layers[path] = self._new_layer(path, mod)
            if attr == "weight":
                layer.weight_cols = (col, p.numel())
            else:
                layer.bias_cols = (col, p.numel())
            col += p.numel()
        mid = self._lay_out()
        if basis == "pca":  # widen the candidate grid until it holds dim_out coordinates (or the whole gradient)
            while mid < self.dim_out and any(lay.k_out < lay.fan_out or lay.k_in < lay.fan_in
                                             for lay in self.layers.values()):
                self.rank *= 2
                for lay in self.layers.values():
                    lay.k_out, lay.k_in = min(lay.fan_out, self.rank), min(lay.fan_in, self.rank)
                mid = self._lay_out()
        self.dim_mid = mid
        cfg = {"projector": kind, "dim": self.dim_out, "seed": self.seed, "block_rows": block_rows,
               "cache_mb": cache_mb, "sparse_nnz": sparse_nnz}
        # pca: the fit replaces the second stage by the choice of the dim_out best coordinates
        self.stage2: Projector | None = (make_flat_projector(cfg, mid, self.device, stage2, name="factored-stage2/")
                                         if mid and basis == "random" else None)
        self.rest_dim = sum(n for _, n in self.rest_cols)
        self.rest: Projector | None = None
        if self.rest_dim:
            self.rest = make_flat_projector(cfg, self.rest_dim, self.device, rest, name="factored-rest/")
            log.info("factored projection: %d parameters (%s) are not Linear/Conv and use the %s projection",
                     self.rest_dim, ", ".join(self.rest_names[:4]) + ("..." if len(self.rest_names) > 4 else ""),
                     rest)
        self._taps: LayerGrads | None = None
        self._rest_comp: PerSampleGrads | None = None
        self._path = "auto"  # "taps" once the tapped path is verified, "flat" when it is not used
        self._group_cache: dict[tuple[int, torch.dtype], list[_Group]] = {}

    def _lay_out(self) -> int:
        """Place every layer's weight and bias slots in the stage-1 sketch; returns its width."""
        mid = 0
        for layer in self.layers.values():
            if layer.weight_cols is not None:
                layer.weight_mid, mid = mid, mid + layer.k_out * layer.k_in
            if layer.bias_cols is not None:
                layer.bias_mid, mid = mid, mid + layer.k_out
        return mid

    @classmethod
    def from_config(cls, cfg: dict[str, Any], comp: PerSampleGrads, device: str | torch.device) -> FactoredProjector:
        rest, stage2 = str(cfg.get("factor_rest", "sparse")), str(cfg.get("factor_stage2", "sparse"))
        for key, val in (("factor_rest", rest), ("factor_stage2", stage2)):
            if val not in ("dense", "sparse"):
                raise ConfigError(f"{key} {val!r} is not dense or sparse", field=f"features.{key}",
                                  fix="use dense or sparse")
        return cls(comp, int(cfg["dim"]), kind=str(cfg.get("projector", "rademacher")), seed=int(cfg.get("seed", 0)),
                   layer_dim=cfg.get("factor_dim", "auto"), out_share=float(cfg.get("factor_out_share", 0.5)),
                   rest=rest, stage2=stage2, sparse_nnz=int(cfg.get("sparse_nnz", 1)), device=device,
                   block_rows=int(cfg.get("block_rows", 4096)), cache_mb=float(cfg.get("cache_mb", 256)),
                   basis=str(cfg.get("factor_basis", "random")), rank=int(cfg.get("factor_rank", 16)))

    def _new_layer(self, path: str, mod: nn.Module) -> _Layer:
        fan_out, fan_in = int(mod.weight.shape[0]), int(mod.weight[0].numel())
        if self.basis == "pca":  # the bases come from the fit
            return _Layer(path, fan_out, fan_in, min(fan_out, self.rank), min(fan_in, self.rank), None, None)
        k_out, k_in = side_dims(fan_out, fan_in, layer_budget(self.layer_dim, fan_out * fan_in), self.out_share)

        def side(rows: int, cols: int, which: str) -> torch.Tensor | None:
            if rows >= cols:
                return None
            m = random_matrix(rows, cols, self.kind, block_seed(self.seed, f"factored/{path}/{which}/{rows}", 0))
            return m.div_(math.sqrt(rows)).to(self.device)

        return _Layer(path, fan_out, fan_in, k_out, k_in, side(k_out, fan_out, "out"), side(k_in, fan_in, "in"))

    # -- from flattened gradients (reference, preconditioned gradients, fallback) ----------------------------------
    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        mid, rest = self._mid_from_flat(grads)
        return self._finish(mid, rest, mid.shape[0], mid.dtype)

    def _mid_from_flat(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_width(grads)
        dtype = torch.float64 if grads.dtype == torch.float64 else torch.float32
        grads = grads.to(self.device, dtype)
        n = grads.shape[0]
        mid = torch.empty(n, self.dim_mid, dtype=dtype, device=self.device)
        for layer in self.layers.values():
            if layer.weight_cols is not None:
                c, k = layer.weight_cols
                _put_weight(mid, layer, grads[:, c : c + k].reshape(n, layer.fan_out, layer.fan_in))
            if layer.bias_cols is not None:
                c, k = layer.bias_cols
                _put_bias(mid, layer, grads[:, c : c + k])
        rest = torch.cat([grads[:, c : c + k] for c, k in self.rest_cols], 1) if self.rest_cols else None
        return mid, rest

    def _finish(self, mid: torch.Tensor, rest: torch.Tensor | None, n: int, dtype: torch.dtype) -> torch.Tensor:
        if self._keep is not None:  # pca: the chosen coordinates; a gradient smaller than dim_out leaves zeros
            out = torch.zeros(n, self.dim_out, dtype=dtype, device=self.device)
            out[:, : self._keep.numel()] = mid.index_select(1, self._keep)
        elif self.stage2 is not None:
            out = self.stage2.project(mid)
        else:
            out = torch.zeros(n, self.dim_out, dtype=dtype, device=self.device)
        if self.rest is not None and rest is not None:
            out += self.rest.project(rest)
        return out

    # -- Adam-preconditioned: the gradients of a group of layers at a time ------------------------------------------
    def preconditioned(self, comp: PerSampleGrads, x: Inputs, y: torch.Tensor,
                       pre: AdamPreconditioner) -> torch.Tensor:
        """Features of one chunk's Adam-preconditioned gradients, the map of :meth:`project` applied to
        ``pre(comp(x, y))``. Once ``comp`` runs on its per-layer path (``mode: layers``, or ``auto`` after its first
        chunk's check), the per-example gradients are formed from the taps a group of same-shaped layers at a time
        (the 30 ``q_proj.lora_A`` of a 30-layer transformer, say, at most :data:`GROUP_BYTES` of gradients),
        preconditioned and projected with one batched operation per step for the whole group: the ``(B, D)``
        gradient and its preconditioning temporaries are never formed, and a chunk runs a few operations per group
        on top of the backward pass instead of several per layer. The other cases take the flat route.
        """
        self._check_fitted()
        taps = comp.layer_path
        if (taps is None or self.rest_cols or not self.layers or not _same_device(self.device, comp.device)
                or taps.dtype not in (torch.float32, torch.float64)):
            return super().preconditioned(comp, x, y, pre)
        x, y = comp.on_device(x, y)
        b, dtype = int(y.shape[0]), taps.dtype
        calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path, a, g in taps.taps(x, y, lambda inp: _call(self.model, None, inp)):
            calls.setdefault(path, []).append(LayerGrads.sides(taps.modules[path], a, g))
        mid = torch.empty(b, self.dim_mid, dtype=dtype, device=self.device)
        with torch.no_grad():
            for group in self._groups(b, dtype):
                self._group_mid(mid, group, calls, pre)
        return self._finish(mid, None, b, dtype)

    def _groups(self, b: int, dtype: torch.dtype) -> list[_Group]:
        """The layers in groups of one shape, each group's gradients within :data:`GROUP_BYTES` for ``b`` rows."""
        key = (b, dtype)
        hit = self._group_cache.get(key)
        if hit is not None:
            return hit
        by_shape: dict[tuple[Any, ...], list[_Layer]] = {}
        for lay in self.layers.values():
            shape = (lay.fan_out, lay.fan_in, lay.k_out, lay.k_in, lay.p_out is None, lay.p_in is None,
                     lay.weight_cols is None, lay.bias_cols is None)
            by_shape.setdefault(shape, []).append(lay)
        item = torch.empty((), dtype=dtype).element_size()
        groups = []
        for same in by_shape.values():
            per_layer = b * same[0].fan_out * (same[0].fan_in * (same[0].weight_cols is not None) + 1) * item
            size = max(1, GROUP_BYTES // per_layer)
            groups += [_Group.of(same[i : i + size], dtype, self.device) for i in range(0, len(same), size)]
        if len(self._group_cache) > 4:  # a shard has one chunk size and a tail
            self._group_cache.clear()
        self._group_cache[key] = groups
        return groups

    def _group_mid(self, mid: torch.Tensor, group: _Group, calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
                   pre: AdamPreconditioner) -> None:
        """One group's preconditioned, projected gradients into their slots of ``mid``."""
        b, dtype, first = mid.shape[0], mid.dtype, group.layers[0]
        n = len(group.layers)
        sides = [calls.pop(lay.path, []) for lay in group.layers]  # none: never reached the loss, a zero gradient
        if first.weight_cols is not None:
            w = torch.empty(n, b, first.fan_out, first.fan_in, dtype=dtype, device=self.device)
            for wi, layer_sides in zip(w, sides):
                if not layer_sides:
                    wi.zero_()
                for j, (a3, g3) in enumerate(layer_sides):  # a shared layer's calls add up, as in LayerGrads
                    prod = _outer_sum(g3, a3)
                    wi.copy_(prod) if j == 0 else wi.add_(prod)
            pre.apply_(w, group.weight_cols)
            if group.p_out is not None:
                w = torch.matmul(group.p_out, w)
            if group.p_in_t is not None:
                w = torch.matmul(w, group.p_in_t)
            mid[:, group.weight_mid] = w.reshape(n, b, -1).transpose(0, 1).reshape(b, -1)
        if first.bias_cols is not None:
            bias = torch.empty(n, b, first.fan_out, dtype=dtype, device=self.device)
            for bi, layer_sides in zip(bias, sides):
                if not layer_sides:
                    bi.zero_()
                for j, (_, g3) in enumerate(layer_sides):
                    torch.sum(g3, 1, out=bi) if j == 0 else bi.add_(g3.sum(1))
            pre.apply_(bias, group.bias_cols)
            if group.p_out is not None:
                # (n, b, fan_out) @ (n, fan_out, k_out)
                bias = torch.matmul(bias, group.p_out.squeeze(1).transpose(1, 2))
            mid[:, group.bias_mid] = bias.transpose(0, 1).reshape(b, -1)

    # -- from the layer taps: the D-dim gradient is never formed ---------------------------------------------------
    def _mid_from_taps(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        assert self._taps is not None
        b = int(y.shape[0])
        taps = self._taps.taps(x, y, lambda inp: _call(self.model, None, inp))
        dtype = self._taps.dtype
        # not zero-filled: every slot is written by its layer's first call (a shared layer's later calls add), and
        # only the slots of layers that never reached the loss are zeroed
        mid = torch.empty(b, self.dim_mid, dtype=dtype, device=self.device)
        written: set[tuple[str, str]] = set()

        def put(key: tuple[str, str], start: int, value: torch.Tensor) -> None:
            view = mid[:, start : start + value[0].numel()].view(value.shape)
            view.add_(value) if key in written else view.copy_(value)
            written.add(key)

        with torch.no_grad():
            for path, a, g in taps:
                layer, mod = self.layers[path], self._taps.modules[path]
                g3 = LayerGrads.sides(mod, a, g)[1] if isinstance(mod, nn.Linear) else g.flatten(2).transpose(1, 2)
                gp = g3 @ layer.p_out.to(dtype).T if layer.p_out is not None else g3  # (B, P, k_out)
                if layer.weight_cols is not None:
                    ap = _input_side(mod, a, layer.p_in.to(dtype) if layer.p_in is not None else None)  # (B, P, k_in)
                    # a contiguous product, then one copy: a batched product into a strided view of `mid` takes
                    # torch's per-example fallback
                    put((path, "weight"), layer.weight_mid, _outer_sum(gp, ap))
                if layer.bias_cols is not None:
                    put((path, "bias"), layer.bias_mid, gp.sum(1))
            for layer in self.layers.values():
                if layer.weight_cols is not None and (layer.path, "weight") not in written:
                    mid[:, layer.weight_mid : layer.weight_mid + layer.k_out * layer.k_in].zero_()
                if layer.bias_cols is not None and (layer.path, "bias") not in written:
                    mid[:, layer.bias_mid : layer.bias_mid + layer.k_out].zero_()
        return mid

    def _rest_grads(self, x: Inputs, y: torch.Tensor) -> torch.Tensor | None:
        if not self.rest_names:
            return None
        if self._rest_comp is None:
            self._rest_comp = PerSampleGrads(self.model, self.loss_fn, [_glob_literal(n) for n in self.rest_names],
                                             "auto", reuse=True)
        return self._rest_comp(x, y)

    def _from_taps(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        mid = self._mid_from_taps(x, y)
        return self._finish(mid, self._rest_grads(x, y), mid.shape[0], mid.dtype)

    def features(self, comp: PerSampleGrads, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        if self._path == "taps":
            return self._from_taps(x, y)
        if self._path == "flat" or not self.layers:
            self._path = "flat"
            return self.project(comp(x, y))
        try:
            params = {n: p for n, p in comp.params.items() if n not in self.rest_names}
            self._taps = LayerGrads(self.model, params, self.loss_fn)
            out = self._from_taps(x, y)
        except Unsupported as exc:
            log.info("factored projection: layer taps do not apply (%s); projecting flattened gradients", exc)
            return self._step_down(comp, x, y)
        except Exception as exc:  # a forward pass the hooks cannot follow
            log.warning("factored projection: layer taps failed (%s: %s); projecting flattened gradients",
                        type(exc).__name__, str(exc).strip()[:200])
            return self._step_down(comp, x, y)
        k = min(CHECK_ROWS, batch_len(x))
        ref = self.project(comp._loop_chunk(slice_inputs(x, 0, k), y[:k]))
        err = ((out[:k] - ref).norm() / ref.norm().clamp_min(torch.finfo(ref.dtype).tiny)).item()
        if not err <= agreement_tol(ref):
            log.warning("factored projection: layer taps disagree with the per-example loop (relative error %.2g); "
                        "projecting flattened gradients", err)
            return self._step_down(comp, x, y)
        self._path = "taps"
        return out

    def _step_down(self, comp: PerSampleGrads, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        self._path, self._taps = "flat", None
        return self.project(comp(x, y))

    # -- the pca basis ----------------------------------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        """True for a ``pca`` basis not fitted yet: :meth:`fit` must see rows before any features are made."""
        return self.basis == "pca" and self._keep is None

    def _check_fitted(self) -> None:
        if self.needs_fit:
            raise RuntimeError("factored projection with factor_basis pca: call fit() before computing features")

    def fit(self, comp: PerSampleGrads, batches: Iterable[tuple[Inputs, torch.Tensor]]) -> None:
        """Fit the pca basis (:mod:`datasel.features.pca_basis`) to the gradients of ``batches`` (two passes).

        Every shard, split and process that must share a feature space has to be fitted on the same rows.
        """
        if self.basis != "pca":
            return
        batches = list(batches)
        self._group_cache = {}
        taps = self._fit_taps()
        try:
            moments = self._moments(comp, batches, taps)
        except Exception as exc:  # a forward pass the hooks cannot follow
            if taps is None:
                raise
            log.warning("factored pca fit: layer taps failed (%s: %s); fitting on flattened gradients",
                        type(exc).__name__, str(exc).strip()[:200])
            taps = None
            moments = self._moments(comp, batches, None)
        for path, layer in self.layers.items():
            layer.p_out = top_directions(moments[path].out, layer.k_out).to(self.device)
            layer.p_in = top_directions(moments[path].inp, layer.k_in).to(self.device)
        energy = torch.zeros(self.dim_mid, dtype=torch.float64, device=self.device)
        self._taps = taps
        for x, y in batches:
            mid = self._mid_from_taps(x, y) if taps is not None else self._mid_from_flat(comp(x, y))[0]
            energy += mid.double().pow(2).sum(0)
        self._taps = None
        self._keep = keep_columns(energy, self.dim_out).to(self.device)
        self.fitted_rows = sum(batch_len(x) for x, _ in batches)
        # trace(Σ G Gᵀ) = Σ ‖G‖²: the weight gradients' whole energy, next to what the kept coordinates hold
        total = sum(float(moments[p].out.trace()) * (lay.weight_cols is not None)
                    + float(moments[p].bias) * (lay.bias_cols is not None) for p, lay in self.layers.items())
        self.energy_share = float(energy[self._keep].sum()) / max(total, 1e-300)
        log.info("factored pca basis: fitted on %d rows (%s); %d of %d candidate coordinates kept, holding %.1f%% of "
                 "the gradients' squared norm (inner products of features run low by the rest)", self.fitted_rows,
                 "layer taps" if taps is not None else "flattened gradients", self._keep.numel(), self.dim_mid,
                 100 * self.energy_share)

    def _moments(self, comp: PerSampleGrads, batches: list[tuple[Inputs, torch.Tensor]],
                 taps: LayerGrads | None) -> dict[str, SideMoments]:
        moments = {path: SideMoments(lay.fan_out, lay.fan_in, self.device) for path, lay in self.layers.items()}
        for x, y in batches:
            if taps is not None:
                sides: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
                for path, a, g in taps.taps(x, y, lambda inp: _call(self.model, None, inp)):
                    sides.setdefault(path, []).append(LayerGrads.sides(taps.modules[path], a, g))
                with torch.no_grad():  # a shared layer's calls are more positions of one gradient
                    for path, calls in sides.items():
                        moments[path].add_sides(torch.cat([g3 for _, g3 in calls], 1),
                                                torch.cat([a3 for a3, _ in calls], 1))
                continue
            grads = comp(x, y)
            for path, layer in self.layers.items():
                if layer.weight_cols is not None:
                    c, k = layer.weight_cols
                    bc, bk = layer.bias_cols or (0, 0)
                    moments[path].add_weights(grads[:, c : c + k].reshape(-1, layer.fan_out, layer.fan_in),
                                              grads[:, bc : bc + bk] if layer.bias_cols is not None else None)
        return moments

    def _fit_taps(self) -> LayerGrads | None:
        try:
            params = {n: p for n, p in self.comp.params.items() if n not in self.rest_names}
            return LayerGrads(self.model, params, self.loss_fn)
        except Unsupported as exc:
            log.info("factored pca fit: layer taps do not apply (%s); fitting on flattened gradients", exc)
            return None

    def _basis_sha(self) -> str | None:
        if self._keep is None:
            return None
        h = hashlib.sha256()
        for lay in self.layers.values():
            for t in (lay.p_out, lay.p_in):
                h.update(t.detach().cpu().contiguous().numpy().tobytes() if t is not None else b"-")
        h.update(self._keep.cpu().numpy().astype("int64").tobytes())
        return h.hexdigest()[:16]

    @property
    def path(self) -> str:
        """``taps`` (no D-dim gradient), ``flat`` (projects flattened gradients) or ``auto`` (before the first chunk)."""
        return self._path

    def fingerprint(self) -> dict[str, Any]:
        if self.basis == "pca":  # the basis is data: its digest, not a seed, says which map this is
            return {"projection": "factored", "kind": "pca", "dim_in": self.dim_in, "dim_out": self.dim_out,
                    "fit_rows": self.fitted_rows, "basis_sha": self._basis_sha(),
                    "factor_rest": self.rest.fingerprint() if self.rest is not None else None,
                    "layers": [[lay.path, lay.k_out, lay.k_in] for lay in self.layers.values()]}
        return {"projection": "factored", "kind": self.kind, "dim_in": self.dim_in, "dim_out": self.dim_out,
                "seed": self.seed, "factor_dim": self.layer_dim, "factor_out_share": self.out_share,
                "factor_rest": self.rest.fingerprint() if self.rest is not None else None,
                "stage2": self.stage2.fingerprint() if self.stage2 is not None else None,
                "layers": [[lay.path, lay.k_out, lay.k_in] for lay in self.layers.values()]}


def _same_device(a: torch.device, b: torch.device) -> bool:
    """One device, where one of them may leave the index out (``cuda`` and ``cuda:0``)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _put_weight(mid: torch.Tensor, layer: _Layer, w: torch.Tensor) -> None:
    """A layer's per-example weight gradients ``(n, fan_out, fan_in)`` sketched into their slots of ``mid``."""
    dtype = mid.dtype
    if layer.p_out is not None:
        w = torch.matmul(layer.p_out.to(dtype), w)
    if layer.p_in is not None:
        w = torch.matmul(w, layer.p_in.to(dtype).T)
    mid[:, layer.weight_mid : layer.weight_mid + layer.k_out * layer.k_in] = w.reshape(w.shape[0], -1)


def _put_bias(mid: torch.Tensor, layer: _Layer, bias: torch.Tensor) -> None:
    """A layer's per-example bias gradients ``(n, fan_out)`` sketched into their slots of ``mid``."""
    mid[:, layer.bias_mid : layer.bias_mid + layer.k_out] = (
        bias @ layer.p_out.to(mid.dtype).T if layer.p_out is not None else bias)


def _input_side(mod: nn.Module, a: torch.Tensor, p_in: torch.Tensor | None) -> torch.Tensor:
    """``P_in a_t`` at every position, ``(B, P, k_in)``. For a convolution, ``P_in`` applied to every sliding window
    is itself a convolution with ``P_in`` as its k_in filters: no unfolded copy of the input is made."""
    if isinstance(mod, nn.Linear):
        a3 = a.reshape(a.shape[0], -1, a.shape[-1])
        return a3 @ p_in.T if p_in is not None else a3
    if p_in is None:
        return _unfold(mod, a)
    conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    out = conv(a, p_in.reshape(p_in.shape[0], *mod.weight.shape[1:]), None, mod.stride, mod.padding, mod.dilation)
    return out.flatten(2).transpose(1, 2)


def _factor_dim(value: Any) -> int | str:
    """``auto`` or a positive integer (``"1024"`` from a command line included); anything else is a ConfigError."""
    if value == "auto":
        return "auto"
    dim = None
    if isinstance(value, int) and not isinstance(value, bool):
        dim = value
    elif isinstance(value, str) and value.strip().isdigit():
        dim = int(value)
    if dim is None or dim < 1:
        raise ConfigError(f"factor_dim {value!r} is neither auto nor a positive integer", field="features.factor_dim",
                          fix="use auto, or the per-layer sketch size, e.g. 1024")
    return dim


def _glob_literal(name: str) -> str:
    """A parameter name as a glob pattern that matches only itself (``[`` and friends escaped)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)
