"""Exact per-sample gradients from one batched backward pass: layer input × gradient at the layer output.

For a layer ``z = W a + b`` applied at positions ``t`` (a sequence, a convolution's sliding windows), the loss of
example ``i`` has ``∂ℓ_i/∂W = Σ_t g_{i,t} a_{i,t}ᵀ`` and ``∂ℓ_i/∂b = Σ_t g_{i,t}``, where ``g_{i,t} = ∂ℓ_i/∂z_{i,t}``.
When the batch loss is the mean of per-example losses and examples do not interact, one ordinary backward pass of
``B · loss`` to the layer outputs gives every ``g_{i,t}``, so the per-example gradients cost one batched matrix
product per layer on top of a plain backward pass (Goodfellow 2015; the approach of Opacus' grad samplers). This
is what lets the feature store run near the cost of a plain batched backward; ``vmap`` pays for tracing one example
at a time through every operation, which on CPU turns each convolution into a slow grouped convolution.

Only ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding) own parameters here. LoRA adapters
(peft) are ``nn.Linear`` modules, so the transformer LoRA path qualifies. ``PerSampleGrads(mode="auto")`` checks
this path against the per-example loop on its first chunk before trusting it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]

SMALL_ITEM = 1 << 16  # weights per layer up to which a per-example product is formed contiguously, then copied

# Losses known to be the mean of independent per-example losses: ``B · loss`` is then the sum of them.
_MEAN_LOSSES: set[Callable[..., Any]] = {F.cross_entropy}


def mark_per_example_mean(fn: LossFn) -> LossFn:
    """Declare that ``fn(out, y)`` is the batch mean of per-example losses (so the layer path may be used)."""
    _MEAN_LOSSES.add(fn)
    return fn


def is_per_example_mean(fn: LossFn) -> bool:
    return fn in _MEAN_LOSSES


class Unsupported(ValueError):
    """The model or parameter set cannot use the layer path; the message says why."""


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str, str]:
    path, _, attr = name.rpartition(".")
    return model.get_submodule(path) if path else model, path, attr


def _check_module(mod: nn.Module, path: str, attr: str) -> None:
    if attr not in ("weight", "bias"):
        raise Unsupported(f"parameter {path}.{attr} is not a layer weight or bias")
    if isinstance(mod, nn.Linear):
        return
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        if mod.groups != 1:
            raise Unsupported(f"{path} is a grouped convolution")
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise Unsupported(f"{path} uses padding {mod.padding!r} / {mod.padding_mode!r}")
        return
    raise Unsupported(f"{path} is a {type(mod).__name__} (only Linear and Conv1d/Conv2d are supported)")


def _couples_examples(model: nn.Module) -> str | None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            return f"{name} is a batch norm in training mode"
    return None


def _unfold(mod: nn.Conv1d | nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """Sliding windows of the layer input, ``(B, positions, C_in · prod(kernel))`` in the weight's column order.

    Built from strided views of the (zero-padded) input and one copy, not ``F.unfold``: on CPU im2col costs 6-20x
    more for the small layers of a proxy model (measured: 2.1 ms against 0.36 ms for 256 × 32 × 19, kernel 3)."""
    spatial = a.dim() - 2
    ks, st, pad, dil = (tuple(getattr(mod, n)) for n in ("kernel_size", "stride", "padding", "dilation"))
    if any(pad):
        a = F.pad(a, [p for p in reversed(pad) for _ in (0, 1)])
    for i in range(spatial):  # each spatial dim d becomes (positions_d, span_d), appended after the others
        a = a.unfold(2 + i, (ks[i] - 1) * dil[i] + 1, st[i])
    if any(d > 1 for d in dil):
        a = a[(..., *(slice(None, None, d) for d in dil))]
    # (B, C, P_1..P_s, k_1..k_s) -> (B, P_1..P_s, C, k_1..k_s) -> (B, P, C·k)
    perm = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
    # contiguous: with one input channel the reshape is a view of overlapping windows, which bmm copies per example
    return a.permute(perm).reshape(a.shape[0], -1, a.shape[1] * math.prod(ks)).contiguous()


class LayerGrads:
    """Per-sample gradients ``(B, D)`` of the parameters ``params`` (name → tensor, in column order).

    Raises :class:`Unsupported` (with the reason) when a parameter is not a Linear/Conv weight or bias, the loss is not
    declared a per-example mean, or a batch norm in training mode couples the examples of a batch.
    ``reuse``: return views of one output buffer kept across chunks (valid until the next call), for callers that
    consume each chunk at once; on CPU a fresh ``(B, D)`` tensor per chunk costs page faults on every call.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor], loss_fn: LossFn,
                 reuse: bool = False) -> None:
        if not is_per_example_mean(loss_fn):
            raise Unsupported(f"loss {getattr(loss_fn, '__name__', loss_fn)!r} is not declared a per-example mean")
        reason = _couples_examples(model)
        if reason:
            raise Unsupported(reason)
        self.model, self.loss_fn, self.reuse = model, loss_fn, reuse
        self.layout: list[tuple[str, str, int]] = []  # (module path, attr, numel) in column order
        self.modules: dict[str, nn.Module] = {}
        for name, p in params.items():
            mod, path, attr = _owner(model, name)
            _check_module(mod, path, attr)
            self.modules[path] = mod
            self.layout.append((path, attr, p.numel()))
        self.wanted = {(path, attr) for path, attr, _ in self.layout}
        self.dim = sum(n for _, _, n in self.layout)
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device
        self._out: torch.Tensor | None = None
        self._clone_outputs = False  # set once a forward pass is seen to modify a tapped output in place

    @staticmethod
    def sides(mod: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer inputs and output gradients per position: ``(B, P, fan_in)`` and ``(B, P, fan_out)``, so that the
        example's weight gradient is ``Σ_t g_t a_tᵀ`` over its ``P`` positions (windows of a convolution)."""
        b = g.shape[0]
        if isinstance(mod, nn.Linear):
            return a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
        return _unfold(mod, a), g.reshape(b, g.shape[1], -1).transpose(1, 2)

    @staticmethod
    def _weight(a3: torch.Tensor, g3: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        """Σ_t g_t a_tᵀ per example into ``out`` (B, fan_out, fan_in), a view of the output; added to it for a
        module's later calls."""
        gt = g3.transpose(1, 2)  # (B, fan_out, P) @ (B, P, fan_in)
        if a3.shape[1] == 1:  # one position: an outer product, cheaper as a broadcast multiply
            out.addcmul_(gt, a3) if accumulate else torch.mul(gt, a3, out=out)
        elif out[0].numel() <= SMALL_ITEM:
            # `out` is strided across examples, so a product into it runs as one small GEMM per example; for small
            # layers a contiguous product and one copy is several times faster (the copy is 1/P of the flops)
            prod = _outer_sum(g3, a3)
            out.add_(prod) if accumulate else out.copy_(prod)
        else:
            out.baddbmm_(gt, a3) if accumulate else torch.bmm(gt, a3, out=out)

    def taps(self, x: Any, y: torch.Tensor, call: Callable[[Any], Any]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(module path, layer input, gradient of B·loss at that call's output) for every call of a tapped layer."""
        seen: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []
        clone = self._clone_outputs

        def tap(path: str) -> Callable[..., torch.Tensor | None]:
            def hook(_mod: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
                # an in-place op downstream (ReLU(inplace=True)) would rewrite the tensor whose gradient we ask for;
                # the version counter shows it, and only then are outputs cloned (a copy per layer per chunk)
                seen.append((path, inputs[0].detach(), output, output._version))
                return output.clone() if clone else None  # the clone goes downstream; ours is left untouched
            return hook

        handles = [m.register_forward_hook(tap(p)) for p, m in self.modules.items()]
        try:
            with torch.enable_grad():
                loss = self.loss_fn(call(x), y) * y.shape[0]
        finally:
            for h in handles:
                h.remove()
        if not clone and any(o._version != v for _, _, o, v in seen):
            self._clone_outputs = True
            return self.taps(x, y, call)
        outs = [o for _, _, o, _ in seen]
        grads = torch.autograd.grad(loss, outs, allow_unused=True) if outs else ()
        return [(p, a, g) for (p, a, _, _), g in zip(seen, grads) if g is not None]  # None: output unused by the loss

    def _output(self, b: int) -> torch.Tensor:
        if not self.reuse:
            return torch.empty(b, self.dim, dtype=self.dtype, device=self.device)
        if self._out is None or self._out.shape[0] < b:
            self._out = torch.empty(b, self.dim, dtype=self.dtype, device=self.device)
        return self._out[:b]  # a leading slice of a row-major buffer: still contiguous

    def __call__(self, x: Any, y: torch.Tensor, call: Callable[[Any], Any]) -> torch.Tensor:
        """Per-example gradients of one chunk, ``(B, D)``; ``call(x)`` runs the model's forward pass."""
        b = int(y.shape[0])
        taps = self.taps(x, y, call)
        out = self._output(b)
        cols: dict[tuple[str, str], tuple[int, int]] = {}
        col = 0
        for path, attr, numel in self.layout:
            cols[(path, attr)] = (col, numel)
            col += numel
        written: set[tuple[str, str]] = set()
        with torch.no_grad():
            for path, a, g in taps:
                mod = self.modules[path]
                a3 = g3 = None
                if (path, "weight") in self.wanted:
                    c, n = cols[(path, "weight")]
                    view = out[:, c : c + n].view(b, mod.weight.shape[0], mod.weight[0].numel())
                    a3, g3 = self.sides(mod, a, g)
                    self._weight(a3, g3, view, accumulate=(path, "weight") in written)
                    written.add((path, "weight"))
                if (path, "bias") in self.wanted:
                    c, n = cols[(path, "bias")]
                    g3 = g3 if g3 is not None else self.sides(mod, a, g)[1]
                    if (path, "bias") in written:
                        out[:, c : c + n].add_(g3.sum(1))
                    else:
                        torch.sum(g3, 1, out=out[:, c : c + n])
                        written.add((path, "bias"))
            for key, (c, n) in cols.items():
                if key not in written:  # the layer never reached the loss: its gradient is zero
                    out[:, c : c + n].zero_()
        return out

    def sq_norms(self, x: Any, y: torch.Tensor, call: Callable[[Any], Any]) -> torch.Tensor:
        """‖∂ℓ_i/∂θ‖² per example, ``(B,)``, without the ``(B, D)`` gradient ("ghost norms", Goodfellow 2015; Li et
        al. 2022). Per layer, ``‖Σ_t g_t a_tᵀ‖²_F = Σ_{t,t'} (g_t·g_t')(a_t·a_t')``: the sum of the elementwise product
        of the two sides' position Gram matrices, or ``‖g‖²‖a‖²`` at one position. Where ``P² (fan_in + fan_out)``
        exceeds ``P · fan_in · fan_out`` (long sequences, small layers) the layer's gradient is formed instead, one
        layer at a time. Calls of a shared layer are positions of one sum, so they are joined first."""
        b = int(y.shape[0])
        per_mod: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path, a, g in self.taps(x, y, call):
            per_mod.setdefault(path, []).append(self.sides(self.modules[path], a, g))
        total = torch.zeros(b, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for path, sides in per_mod.items():
                a3 = torch.cat([s[0] for s in sides], 1) if len(sides) > 1 else sides[0][0]
                g3 = torch.cat([s[1] for s in sides], 1) if len(sides) > 1 else sides[0][1]
                if (path, "weight") in self.wanted:
                    total += _weight_sq_norm(a3, g3)
                if (path, "bias") in self.wanted:
                    total += g3.sum(1).square().sum(1)
        return total


def _weight_sq_norm(a3: torch.Tensor, g3: torch.Tensor) -> torch.Tensor:
    """‖Σ_t g_t a_tᵀ‖²_F per example from the sides ``(B, P, fan_in)``, ``(B, P, fan_out)``, by the cheaper route."""
    p, fan_in, fan_out = a3.shape[1], a3.shape[2], g3.shape[2]
    if p == 1:
        return a3.square().sum((1, 2)) * g3.square().sum((1, 2))
    if p * (fan_in + fan_out) <= fan_in * fan_out:
        ga = torch.bmm(a3, a3.transpose(1, 2))
        gg = torch.bmm(g3, g3.transpose(1, 2))
        return (ga * gg).sum((1, 2))
    return torch.bmm(g3.transpose(1, 2), a3).square().sum((1, 2))


def _outer_sum(g3: torch.Tensor, a3: torch.Tensor) -> torch.Tensor:
    """``Σ_t g_t a_tᵀ`` per example, ``(B, n_g, n_a)`` (possibly a transposed view), from ``(B, P, n_g)`` and
    ``(B, P, n_a)``: a contiguous batched product with the wider side as its columns, because MKL's batched GEMM is
    several times slower on tall, narrow items (measured: 0.6 ms against 0.08 ms for 256 × (32 × 5), P = 19)."""
    if g3.shape[1] == 1:  # one position: an outer product, cheaper as a broadcast multiply
        return g3.transpose(1, 2) * a3
    if a3.shape[2] < g3.shape[2]:
        return torch.matmul(a3.transpose(1, 2), g3).transpose(1, 2)
    return torch.matmul(g3.transpose(1, 2), a3)
