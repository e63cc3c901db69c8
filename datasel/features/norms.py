"""Per-example gradient norms (GraNd's score) without materializing per-example gradients where the layers allow.

``mode``:

- ``ghost``: per layer ``‖Σ_t g_t a_tᵀ‖²`` from the two sides' Gram products (:meth:`LayerGrads.sq_norms`), exact,
  from one batched backward pass; every chosen parameter must be a Linear/Conv weight or bias;
- ``layers`` / ``vmap`` / ``loop``: the flattened ``(chunk, D)`` gradient of that path, then its row norms;
- ``auto``: ghost norms if they apply and agree with the per-example loop on the first rows of the first chunk
  (as ``PerSampleGrads`` checks its layer path), else ``PerSampleGrads``'s own auto choice; each step down is logged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.features.grads import MODES, Inputs, PerSampleGrads, _call, _to, agreement_tol, batch_len, slice_inputs
from datasel.features.layer_grads import LayerGrads, LossFn, Unsupported
from datasel.runtime import autocast

log = logging.getLogger(__name__)

NORM_MODES = ("ghost", *MODES)
CHECK_ROWS = 4  # rows of the first chunk checked against the per-example loop before ghost norms are trusted


class GradNorms:
    """``‖∂ℓ_i/∂θ‖`` per example of one chunk; ``mode`` holds the path chosen once the first chunk has run."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, params: str | list[str] = "all", mode: str = "auto") -> None:
        if mode not in NORM_MODES:
            raise ConfigError(f"unknown gradient-norm mode {mode!r}", field="scoring.grand.mode",
                              fix=f"use one of {NORM_MODES}")
        # The flat path's buffer is reused: its rows are reduced to norms before the next chunk is asked for.
        self.comp = PerSampleGrads(model, loss_fn, params, "auto" if mode == "ghost" else mode, reuse=True)
        self.model, self.mode = model, mode
        self._ghost: LayerGrads | None = None
        if mode in ("ghost", "auto"):
            try:
                self._ghost = LayerGrads(model, self.comp.params, loss_fn)
            except Unsupported as exc:
                if mode == "ghost":
                    raise ConfigError(f"ghost norms cannot run here: {exc}", field="scoring.grand.mode",
                                      fix="use mode: auto (falls back to per-example gradients)") from None
                log.info("ghost norms do not apply to %s (%s); using per-example gradients", type(model).__name__, exc)
                self.mode = self.comp.mode

    def _ghost_chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        assert self._ghost is not None
        return self._ghost.sq_norms(x, y, lambda inp: _call(self.model, None, inp)).clamp_min_(0).sqrt_()

    def _flat_chunk(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        # vector_norm reduces in place of g.pow(2).sum(1): no second (chunk, D) tensor
        return torch.linalg.vector_norm(self.comp(x, y), dim=1)

    def __call__(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        # exact work: fp32 unless compute.precision names bf16/fp16
        with autocast(self.comp.device, exact=True, purpose="per-example gradient norms"):
            out = self._norms(x, y)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out

    def _norms(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        x, y = _to(x, self.comp.device), y.to(self.comp.device)
        if self.mode == "ghost":
            return self._ghost_chunk(x, y)
        if self.mode != "auto" or self._ghost is None:
            return self._flat_chunk(x, y)
        try:
            out = self._ghost_chunk(x, y)
        except Exception as exc:  # a forward pass the hooks cannot follow (reshaped batch dimension, ...)
            log.warning("ghost norms failed on %s (%s: %s); using per-example gradients", type(self.model).__name__,
                        type(exc).__name__, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")
            return self._step_down(x, y)
        k = min(CHECK_ROWS, batch_len(x))
        ref = torch.linalg.vector_norm(self.comp._loop_chunk(slice_inputs(x, 0, k), y[:k]), dim=1)
        err = ((out[:k] - ref).abs() / ref.abs().clamp_min(torch.finfo(ref.dtype).tiny)).max().item()
        if not err <= agreement_tol(ref):
            log.warning("ghost norms disagree with the per-example loop on %s (relative error %.2g); using "
                        "per-example gradients", type(self.model).__name__, err)
            return self._step_down(x, y)
        self.mode = "ghost"
        return out

    def _step_down(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        self._ghost = None
        out = self._flat_chunk(x, y)
        self.mode = self.comp.mode
        return out


def grad_norms(model: nn.Module, inputs: Inputs, targets: torch.Tensor, loss_fn: LossFn,
               params: str | list[str] = "all", chunk_size: int = 256, mode: str = "auto") -> torch.Tensor:
    """``‖∇_θ ℓ(x_i, y_i)‖`` for every example, chunk by chunk (memory bounded by the chunk, not by N)."""
    norms = GradNorms(model, loss_fn, params, mode)
    n = batch_len(inputs)
    return torch.cat([norms(slice_inputs(inputs, s, s + chunk_size), targets[s : s + chunk_size])
                      for s in range(0, n, chunk_size)])
