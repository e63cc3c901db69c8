"""Per-sample gradients with ``torch.func``: functional_call + vmap(grad), chunked over the batch.

Memory is bounded by ``chunk_size`` × (number of selected parameters), never by the dataset size.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from datasel.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _per_sample_fn(model: nn.Module, params: dict[str, torch.Tensor], loss_fn: LossFn) -> Callable[..., Any]:
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**frozen, **p}, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))


def iter_per_sample_grads(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield, chunk by chunk, a dict name → (chunk, *param.shape) of per-example gradients."""
    chosen = {n: p.detach() for n, p in select_params(model, params).items()}
    fn = _per_sample_fn(model, chosen, loss_fn)
    for start in range(0, inputs.shape[0], chunk_size):
        yield fn(chosen, inputs[start : start + chunk_size], targets[start : start + chunk_size])


def per_sample_grads(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
) -> torch.Tensor:
    """Flattened per-example gradients, shape (N, D), concatenated in ``select_params`` order."""
    rows = [
        torch.cat([g.reshape(g.shape[0], -1) for g in chunk.values()], dim=1)
        for chunk in iter_per_sample_grads(model, inputs, targets, loss_fn, params, chunk_size)
    ]
    return torch.cat(rows, dim=0)


def per_sample_grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    params: str | list[str] = "all",
    chunk_size: int = 256,
) -> torch.Tensor:
    """‖∇_θ ℓ(x_i, y_i)‖ over the chosen parameters, without materializing the flattened (N, D) matrix."""
    norms = []
    for chunk in iter_per_sample_grads(model, inputs, targets, loss_fn, params, chunk_size):
        sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in chunk.values())
        norms.append(sq.sqrt())
    return torch.cat(norms)
