"""Random projections of per-example gradients: ``(n, D) -> (n, k)`` with ``E[<Pg, Ph>] = <g, h>``.

The D×k matrix is defined block by block: rows ``[b*R, (b+1)*R)`` come from a CPU ``torch.Generator`` seeded by
``(seed, b)``. Any shard, process or machine therefore rebuilds exactly the same matrix, whatever its chunking, and
only one R×k block needs to exist at a time. Blocks are generated on the CPU (the CUDA generator draws a different
stream) and moved to the compute device; they are kept there only while their total fits in ``cache_mb``, so the
full matrix is held only when the user's memory budget allows it.

An optional Adam preconditioner (LESS, Xia et al. 2024) rescales a gradient to the update Adam would take,
``m'/sqrt(v'+eps)`` with ``m' = b1 m + (1-b1) g`` and ``v' = b2 v + (1-b2) g^2``, before projection (eps inside
the root, no bias correction: LESS's ``obtain_gradients_with_adam``).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from datasel.errors import ConfigError

KINDS = ("rademacher", "gaussian", "none")


class Projector(ABC):
    """Maps flattened gradients ``(n, dim_in)`` to features ``(n, dim_out)``."""

    dim_in: int
    dim_out: int

    @abstractmethod
    def project(self, grads: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the matrix; stored in shard metadata and compared on read."""


class NoOpProjector(Projector):
    """Keeps the raw gradient (small parameter sets, or tests against exact inner products)."""

    def __init__(self, dim_in: int) -> None:
        self.dim_in = self.dim_out = int(dim_in)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        return grads

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "none", "dim_in": self.dim_in, "dim_out": self.dim_out}


def _block_seed(seed: int, kind: str, block: int) -> int:
    # A hash, not seed + block: neighbouring seeds must not share blocks shifted by one.
    digest = hashlib.blake2b(f"datasel-proj/{kind}/{seed}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class DenseProjector(Projector):
    """Dense Rademacher (±1) or Gaussian projection scaled by 1/sqrt(k), generated in blocks of ``block_rows`` rows.

    The matrix depends on ``(kind, seed, dim_in, dim_out, block_rows)`` only, never on the device or the batch.
    """

    def __init__(self, dim_in: int, dim_out: int, kind: str = "rademacher", seed: int = 0,
                 device: str | torch.device = "cpu", block_rows: int = 4096, cache_mb: float = 256.0) -> None:
        if kind not in ("rademacher", "gaussian"):
            raise ConfigError(f"unknown projector {kind!r}", field="features.projector", fix=f"use one of {KINDS}")
        if dim_out < 1 or dim_in < 1:
            raise ConfigError(f"projection {dim_in} -> {dim_out} is empty", field="features.dim",
                              fix="use a positive projection dimension")
        self.dim_in, self.dim_out, self.kind, self.seed = int(dim_in), int(dim_out), kind, int(seed)
        self.block_rows = int(block_rows)
        self.device = torch.device(device)
        self.n_blocks = math.ceil(self.dim_in / self.block_rows)
        self._cache_ok = self.dim_in * self.dim_out * 4 <= cache_mb * 2**20
        self._cache: dict[int, torch.Tensor] = {}

    def block(self, b: int) -> torch.Tensor:
        """Rows ``[b*R, min((b+1)*R, D))`` of the unscaled matrix, float32 on the compute device."""
        if b in self._cache:
            return self._cache[b]
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        gen = torch.Generator().manual_seed(_block_seed(self.seed, self.kind, b))
        if self.kind == "rademacher":
            blk = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
        else:
            blk = torch.randn(rows, self.dim_out, generator=gen)
        blk = blk.to(self.device)
        if self._cache_ok:
            self._cache[b] = blk
        return blk

    def matrix(self) -> torch.Tensor:
        """The whole scaled D×k matrix (tests and small D only)."""
        return torch.cat([self.block(b) for b in range(self.n_blocks)]) / math.sqrt(self.dim_out)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        if grads.shape[1] != self.dim_in:
            raise ConfigError(f"gradient width {grads.shape[1]} != projector input {self.dim_in}",
                              field="features.params", fix="build the projector for this parameter set")
        dtype = torch.float64 if grads.dtype == torch.float64 else torch.float32
        grads = grads.to(self.device, dtype)
        out = torch.zeros(grads.shape[0], self.dim_out, dtype=dtype, device=self.device)
        for b in range(self.n_blocks):
            s = b * self.block_rows
            blk = self.block(b)
            out.addmm_(grads[:, s : s + blk.shape[0]], blk.to(dtype))
        return out.mul_(1.0 / math.sqrt(self.dim_out))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim_in": self.dim_in, "dim_out": self.dim_out, "seed": self.seed,
                "block_rows": self.block_rows}


def make_projector(cfg: dict[str, Any], dim_in: int, device: str | torch.device = "cpu") -> Projector:
    """Build the projector a ``features`` config section names (``projector``, ``dim``, ``seed``, ...)."""
    kind = cfg.get("projector", "rademacher")
    if kind not in KINDS:
        raise ConfigError(f"unknown projector {kind!r}", field="features.projector", fix=f"use one of {KINDS}")
    if kind == "none" or int(cfg.get("dim", 0)) <= 0:
        return NoOpProjector(dim_in)
    return DenseProjector(dim_in, int(cfg["dim"]), kind, int(cfg.get("seed", 0)), device,
                          int(cfg.get("block_rows", 4096)), float(cfg.get("cache_mb", 256)))


class AdamPreconditioner:
    """LESS's Adam-update gradient ``m'/sqrt(v'+eps)`` from the optimizer moments of the chosen parameters."""

    def __init__(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.m, self.v = exp_avg.flatten(), exp_avg_sq.flatten()
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        m = self.m.to(grads) * self.b1 + (1 - self.b1) * grads
        v = self.v.to(grads) * self.b2 + (1 - self.b2) * grads.pow(2)
        return m / (v + self.eps).sqrt()  # LESS puts eps inside the root (not torch Adam's sqrt(v)+eps)

    @classmethod
    def from_optimizer_state(cls, opt_state: dict[str, Any], model: torch.nn.Module,
                             chosen: list[str]) -> AdamPreconditioner | None:
        """Moments for ``chosen`` parameter names from a torch Adam/AdamW ``state_dict``; None without moments.

        torch keys optimizer state by the position of a parameter in its param groups; datasel's trainers build
        the optimizer from ``model.parameters()`` (trainable ones, in order), which is the mapping used here.
        """
        state = opt_state.get("state", {})
        groups = opt_state.get("param_groups", [])
        if not state or not groups:
            return None
        order = [p_id for g in groups for p_id in g["params"]]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if len(order) != len(names):
            return None
        by_name = dict(zip(names, order))
        ms, vs = [], []
        for name in chosen:
            st = state.get(by_name[name])
            if st is None or "exp_avg" not in st:
                return None
            ms.append(st["exp_avg"].flatten().float())
            vs.append(st["exp_avg_sq"].flatten().float())
        g0 = groups[0]
        return cls(torch.cat(ms), torch.cat(vs), tuple(g0.get("betas", (0.9, 0.999))), float(g0.get("eps", 1e-8)))
