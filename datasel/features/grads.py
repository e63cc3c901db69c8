"""Per-sample gradients, chunked over the batch: per-layer outer products, ``torch.func`` vmap, or a per-example loop.

Memory is bounded by ``chunk_size`` × (number of selected parameters), never by the dataset size.

Inputs are a tensor (called as ``model(x)``) or a mapping of tensors with a shared leading batch dimension (called
as ``model(**x)``, the Hugging Face convention). Three ways to compute them, fastest first:

- ``layers`` (:mod:`datasel.features.layer_grads`): one batched backward pass to the layer outputs, then the exact
  per-example outer products, when every chosen parameter is a Linear/Conv weight or bias and the loss is a
  per-example mean;
- ``vmap``: ``torch.func`` traces one example and batches it, for any module it can trace;
- ``loop``: an autograd pass per example, for anything (data-dependent Python control flow, ``.item()``, in-place
  buffer updates, some fused kernels).

``mode="auto"`` tries them in that order on the first chunk, checks the layer path against the loop on two examples
of that chunk (so a model whose examples interact inside a batch cannot slip through), and logs each step down.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from datasel.errors import ConfigError
from datasel.features.layer_grads import LayerGrads, LossFn, Unsupported
from datasel.runtime import autocast

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
MODES = ("auto", "layers", "vmap", "loop")

log = logging.getLogger(__name__)
CHECK_ROWS = 6  # rows of the first chunk the per-layer path is checked on against the per-example loop


def agreement_tol(ref: torch.Tensor) -> float:
    """Relative error allowed between a fast path's gradients and the per-example loop's (``ref``): 1e-3 in fp32;
    5e-2 in half precision (half weights, or an autocast compute.precision asked for), which rounds both paths
    differently."""
    half = ref.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(ref.device.type)
    return 5e-2 if half else 1e-3


def select_params(model: nn.Module, spec: str | list[str] = "all") -> dict[str, torch.Tensor]:
    """Resolve a parameter-set spec to named trainable parameters.

    ``all``: every trainable parameter. ``last_layer``: the parameters of the last ``nn.Linear`` (the classifier
    head). ``lora``: peft's LoRA adapter weights. A list of glob patterns: parameter names matching any of them.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if spec == "all":
        chosen = named
    elif spec == "last_layer":
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError("parameter set 'last_layer' needs an nn.Linear layer", field="params")
        prefix = linears[-1] + "."
        chosen = {n: p for n, p in named.items() if n.startswith(prefix)}
    elif spec == "lora":
        chosen = {n: p for n, p in named.items() if "lora_" in n}
    else:
        patterns = [spec] if isinstance(spec, str) else list(spec)
        chosen = {n: p for n, p in named.items() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    if not chosen:
        raise ConfigError(
            f"parameter set {spec!r} matches no trainable parameter",
            field="params",
            fix="use 'all', 'last_layer', 'lora' or glob patterns over: " + ", ".join(list(named)[:8]),
        )
    return chosen


def batch_len(inputs: Inputs) -> int:
    """Number of examples in a tensor or a mapping of tensors."""
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def slice_inputs(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def _to(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def _call(model: nn.Module, state: dict[str, torch.Tensor] | None, x: Inputs) -> Any:
    if state is None:
        return model(**x) if isinstance(x, Mapping) else model(x)
    if isinstance(x, Mapping):
        return functional_call(model, state, (), dict(x))
    return functional_call(model, state, (x,))


class PerSampleGrads:
    """Computes flattened per-example gradients ``(n, D)`` of ``loss_fn(model(x_i), y_i)`` over a parameter set.

    The column order is ``select_params`` order, each tensor flattened row-major; ``names``/``shapes`` record it.
    ``mode``: ``layers``, ``vmap``, ``loop`` (see the module docstring), or ``auto``: the first of them that works
    for this model, decided on the first chunk, with the reasons for skipping the faster ones logged. ``mode`` holds
    the choice afterwards. ``reuse``: the layer path writes every chunk into one buffer (see ``LayerGrads``), for
    callers that consume a chunk before asking for the next.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, params: str | list[str] = "all", mode: str = "auto",
                 reuse: bool = False) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown gradient mode {mode!r}", field="features.mode", fix=f"use one of {MODES}")
        self.model = model
        self.loss_fn = loss_fn
        self.params = select_params(model, params)
        self.names = list(self.params)
        self.shapes = [tuple(p.shape) for p in self.params.values()]
        self.dim = sum(p.numel() for p in self.params.values())
        self.mode = mode
        self.reuse = reuse
        self.device = next(iter(self.params.values())).device
        self._vmapped: Callable[..., Any] | None = None
        self._layers: LayerGrads | None = None
        if mode == "layers":
            try:
                self._layers = LayerGrads(model, self.params, loss_fn, reuse)
            except Unsupported as exc:
                raise ConfigError(f"gradient mode 'layers' cannot run here: {exc}", field="features.mode",
                                  fix="use mode: auto (picks vmap or the loop when the layer path does not apply)") \
                    from None

    @property
    def layer_path(self) -> LayerGrads | None:
        """The per-layer path once it is the chosen mode (``layers``, or ``auto`` after its check), else None."""
        return self._layers if self.mode == "layers" else None

    def on_device(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """A chunk moved to the parameters' device, as every path takes it."""
        return _to(x, self.device), y.to(self.device)

    # -- layer path ------------------------------------------------------------------------------------------------
    def _layers_chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        assert self._layers is not None
        return self._layers(x, y, lambda inp: _call(self.model, None, inp))

    def _try_layers(self, x: Inputs, y: torch.Tensor) -> torch.Tensor | None:
        """The layer path's result for the first chunk if it applies and agrees with the loop, else None (logged)."""
        try:
            self._layers = LayerGrads(self.model, self.params, self.loss_fn, self.reuse)
            out = self._layers_chunk(x, y)
        except Unsupported as exc:
            log.info("per-layer gradients do not apply to %s (%s); trying vmap", type(self.model).__name__, exc)
            return None
        except Exception as exc:  # a forward pass the hooks cannot follow (reshaped batch dimension, ...)
            log.warning("per-layer gradients failed on %s (%s: %s); trying vmap", type(self.model).__name__,
                        type(exc).__name__, _first_line(exc))
            return None
        # rows spread over the whole chunk (first, last and between): a model whose examples interact only in part
        # of the batch (say, after the first few rows) slips past a check on the leading rows
        n = batch_len(x)
        k = min(CHECK_ROWS, n)
        rows = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
        err = 0.0
        for r in rows:
            ref = self._loop_chunk(slice_inputs(x, r, r + 1), y[r : r + 1])[0]
            err = max(err, ((out[r] - ref).norm() / ref.norm().clamp_min(torch.finfo(ref.dtype).tiny)).item())
        if not err <= agreement_tol(ref):
            log.warning("per-layer gradients of %s differ from the per-example loop (relative error %.2g): its "
                        "examples interact inside a batch; trying vmap", type(self.model).__name__, err)
            return None
        return out

    # -- vmap path -----------------------------------------------------------------------------------------------
    def _build_vmap(self) -> Callable[..., Any]:
        model, loss_fn = self.model, self.loss_fn
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in self.params}
        buffers = dict(model.named_buffers())

        def loss_one(p: dict[str, torch.Tensor], x: Inputs, y: torch.Tensor) -> torch.Tensor:
            # vmap strips the batch dimension; the module expects one, so each example is a batch of one.
            xb = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, Mapping) else x.unsqueeze(0)
            out = _call(model, {**frozen, **buffers, **p}, xb)
            return loss_fn(out, y.unsqueeze(0))

        return vmap(grad(loss_one), in_dims=(None, 0, 0))

    def _vmap_chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        if self._vmapped is None:
            self._vmapped = self._build_vmap()
        detached = {n: p.detach() for n, p in self.params.items()}
        grads = self._vmapped(detached, x, y)
        return torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in self.names], dim=1)

    # -- loop path -------------------------------------------------------------------------------------------------
    def _loop_chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        n = batch_len(x)
        out = torch.empty(n, self.dim, dtype=next(iter(self.params.values())).dtype, device=self.device)
        wanted = list(self.params.values())
        for i in range(n):
            xi = slice_inputs(x, i, i + 1)
            with torch.enable_grad():
                loss = self.loss_fn(_call(self.model, None, xi), y[i : i + 1])
                gs = torch.autograd.grad(loss, wanted, allow_unused=True)
            out[i] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, wanted)])
        return out

    def __call__(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """Flattened per-example gradients of one chunk, shape ``(n, D)`` (the chunk is held whole), in the
        parameters' dtype (float32 at least).

        Exact work: fp32 unless compute.precision asks for bf16/fp16 by name (:func:`datasel.runtime.autocast`).
        """
        with autocast(self.device, exact=True, purpose="per-example gradients"):
            out = self._chunk(x, y)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out

    def _chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        x, y = self.on_device(x, y)
        if self.mode == "layers":
            return self._layers_chunk(x, y)
        if self.mode == "loop":
            return self._loop_chunk(x, y)
        if self.mode == "vmap":
            return self._vmap_chunk(x, y)
        out = self._try_layers(x, y)
        if out is not None:
            self.mode = "layers"
            return out
        self._layers = None
        try:
            out = self._vmap_chunk(x, y)
            self.mode = "vmap"
            return out
        except Exception as exc:  # vmap raises many types (RuntimeError, NotImplementedError, ValueError, ...)
            log.warning("vmap cannot trace %s (%s: %s); using the per-example autograd loop",
                        type(self.model).__name__, type(exc).__name__, _first_line(exc))
            self.mode = "loop"
            self._vmapped = None
            return self._loop_chunk(x, y)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def iter_per_sample_grads(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
    mode: str = "auto",
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield, chunk by chunk, a dict name → (chunk, *param.shape) of per-example gradients."""
    comp = PerSampleGrads(model, loss_fn, params, mode)
    for start in range(0, batch_len(inputs), chunk_size):
        flat = comp(slice_inputs(inputs, start, start + chunk_size), targets[start : start + chunk_size])
        out, col = {}, 0
        for name, shape in zip(comp.names, comp.shapes):
            size = int(torch.Size(shape).numel())
            out[name] = flat[:, col : col + size].reshape(flat.shape[0], *shape)
            col += size
        yield out


def iter_flat_grads(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
    mode: str = "auto",
) -> Iterator[torch.Tensor]:
    """Yield flattened ``(chunk, D)`` per-example gradients chunk by chunk."""
    comp = PerSampleGrads(model, loss_fn, params, mode)
    for start in range(0, batch_len(inputs), chunk_size):
        yield comp(slice_inputs(inputs, start, start + chunk_size), targets[start : start + chunk_size])


def per_sample_grads(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
    mode: str = "auto",
) -> torch.Tensor:
    """Flattened per-example gradients, shape (N, D), concatenated in ``select_params`` order."""
    return torch.cat(list(iter_flat_grads(model, inputs, targets, loss_fn, params, chunk_size, mode)), dim=0)


def per_sample_grad_norms(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
    mode: str = "auto",
) -> torch.Tensor:
    """‖∇_θ ℓ(x_i, y_i)‖ over the chosen parameters, by ghost norms where the layers allow (``datasel.features.norms``)."""
    from datasel.features.norms import grad_norms  # norms builds on this module

    return grad_norms(model, inputs, targets, loss_fn, params, chunk_size, mode)
