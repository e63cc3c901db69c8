"""Random projections of per-example gradients: ``(n, D) -> (n, k)`` with ``E[<Pg, Ph>] = <g, h>``.

Three swappable implementations behind :class:`Projector`, named by a feature set's ``projection``:

- ``dense``: a D×k Rademacher (±1) or Gaussian matrix scaled by 1/sqrt(k) (``projector`` picks the entries);
- ``sparse``: CountSketch / sparse JL (Charikar et al. 2002; Kane & Nelson 2014): each input coordinate lands in
  ``sparse_nnz`` output coordinates with a random sign, so projecting costs O(nnz · D) per example, not O(k · D);
- ``factored`` (:mod:`datasel.features.factored`): per Linear/Conv layer, the two sides of ``Σ_t g_t a_tᵀ`` are
  projected and the D-dim gradient is never formed.

Every matrix is defined block by block: rows ``[b*R, (b+1)*R)`` come from a CPU ``torch.Generator`` seeded by
``(seed, kind, b)``. Any shard, process or machine therefore rebuilds exactly the same matrix, whatever its chunking,
and a row's features depend on that row only. Blocks are generated on the CPU (the CUDA generator draws a different
stream) and moved to the compute device; generated blocks are kept while their total fits in ``cache_mb`` and the
rest are regenerated per chunk, so a matrix larger than the budget still keeps most of it.

An optional Adam preconditioner (LESS, Xia et al. 2024) rescales a gradient to the update Adam would take,
``m'/sqrt(v'+eps)`` with ``m' = b1 m + (1-b1) g`` and ``v' = b2 v + (1-b2) g^2``, before projection (eps inside
the root, no bias correction: LESS's ``obtain_gradients_with_adam``).
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from datasel.errors import ConfigError

if TYPE_CHECKING:
    from datasel.features.grads import Inputs, PerSampleGrads

KINDS = ("rademacher", "gaussian", "none")
PROJECTIONS = ("dense", "sparse", "factored")


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

    def features(self, comp: PerSampleGrads, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """Features of one chunk. Projectors that never need the flattened gradient (factored) override this."""
        return self.project(comp(x, y))

    def preconditioned(self, comp: PerSampleGrads, x: Inputs, y: torch.Tensor,
                       pre: AdamPreconditioner) -> torch.Tensor:
        """Features of one chunk's Adam-preconditioned gradients. The preconditioner is elementwise on the full
        gradient, so it needs the gradient itself; ``comp``'s output is consumed (preconditioned in place).
        The factored projection overrides this to form, precondition and project a group of layers at a time."""
        return self.project(pre.apply_(comp(x, y)))

    def fingerprint_sha(self) -> str:
        """A short digest of :meth:`fingerprint`: features whose digests differ must never be compared or mixed."""
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]

    def _check_width(self, grads: torch.Tensor) -> None:
        if grads.shape[1] != self.dim_in:
            raise ConfigError(f"gradient width {grads.shape[1]} != projector input {self.dim_in}",
                              field="features.params", fix="build the projector for this parameter set")


class NoOpProjector(Projector):
    """Keeps the raw gradient (small parameter sets, or tests against exact inner products)."""

    def __init__(self, dim_in: int) -> None:
        self.dim_in = self.dim_out = int(dim_in)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        return grads

    def fingerprint(self) -> dict[str, Any]:
        return {"projection": "none", "kind": "none", "dim_in": self.dim_in, "dim_out": self.dim_out}


def block_seed(seed: int, kind: str, block: int) -> int:
    """Generator seed of one block of one matrix; ``kind`` names the matrix (and the projector that owns it)."""
    # A hash, not seed + block: neighbouring seeds must not share blocks shifted by one.
    digest = hashlib.blake2b(f"datasel-proj/{kind}/{seed}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _check_dims(dim_in: int, dim_out: int) -> None:
    if dim_out < 1 or dim_in < 1:
        raise ConfigError(f"projection {dim_in} -> {dim_out} is empty", field="features.dim",
                          fix="use a positive projection dimension")


def random_matrix(rows: int, cols: int, kind: str, seed: int) -> torch.Tensor:
    """An unscaled ``rows × cols`` Rademacher or Gaussian matrix from one seeded CPU generator (float32)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "rademacher":
        return torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
    return torch.randn(rows, cols, generator=gen)


class _BlockCache:
    """Generated blocks kept while their bytes fit the budget; later blocks are regenerated on every use."""

    def __init__(self, cache_mb: float) -> None:
        self.budget, self.used = float(cache_mb) * 2**20, 0
        self.blocks: dict[int, Any] = {}

    def get(self, b: int, make: Any) -> Any:
        hit = self.blocks.get(b)
        if hit is not None:
            return hit
        blk = make(b)
        size = sum(t.numel() * t.element_size() for t in (blk if isinstance(blk, tuple) else (blk,)))
        if self.used + size <= self.budget:
            self.blocks[b] = blk
            self.used += size
        return blk


class DenseProjector(Projector):
    """Dense Rademacher (±1) or Gaussian projection scaled by 1/sqrt(k), generated in blocks of ``block_rows`` rows.

    The matrix depends on ``(kind, seed, dim_in, dim_out, block_rows)`` only, never on the device or the batch.
    ``name`` keeps the matrices of different owners (a factored projector's second stage) apart for one seed.
    """

    def __init__(self, dim_in: int, dim_out: int, kind: str = "rademacher", seed: int = 0,
                 device: str | torch.device = "cpu", block_rows: int = 4096, cache_mb: float = 256.0,
                 name: str = "") -> None:
        if kind not in ("rademacher", "gaussian"):
            raise ConfigError(f"unknown projector {kind!r}", field="features.projector", fix=f"use one of {KINDS}")
        _check_dims(dim_in, dim_out)
        self.dim_in, self.dim_out, self.kind, self.seed = int(dim_in), int(dim_out), kind, int(seed)
        self.block_rows = int(block_rows)
        self.device = torch.device(device)
        self.name = name
        self.n_blocks = math.ceil(self.dim_in / self.block_rows)
        self._cache = _BlockCache(cache_mb)

    def _make(self, b: int) -> torch.Tensor:
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        return random_matrix(rows, self.dim_out, self.kind,
                             block_seed(self.seed, self.name + self.kind, b)).to(self.device)

    def block(self, b: int) -> torch.Tensor:
        """Rows ``[b*R, min((b+1)*R, D))`` of the unscaled matrix, float32 on the compute device."""
        return self._cache.get(b, self._make)

    def matrix(self) -> torch.Tensor:
        """The whole scaled D×k matrix (tests and small D only)."""
        return torch.cat([self.block(b) for b in range(self.n_blocks)]) / math.sqrt(self.dim_out)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check_width(grads)
        dtype = torch.float64 if grads.dtype == torch.float64 else torch.float32
        grads = grads.to(self.device, dtype)
        out = torch.zeros(grads.shape[0], self.dim_out, dtype=dtype, device=self.device)
        for b in range(self.n_blocks):
            s = b * self.block_rows
            blk = self.block(b)
            out.addmm_(grads[:, s : s + blk.shape[0]], blk.to(dtype))
        return out.mul_(1.0 / math.sqrt(self.dim_out))

    def fingerprint(self) -> dict[str, Any]:
        fp = {"projection": "dense", "kind": self.kind, "dim_in": self.dim_in, "dim_out": self.dim_out,
              "seed": self.seed, "block_rows": self.block_rows}
        return fp | ({"name": self.name} if self.name else {})


class SparseProjector(Projector):
    """CountSketch (``nnz=1``) or sparse JL (``nnz=s``): every input coordinate has ``s`` nonzeros ±1/sqrt(s).

    The k outputs are ``s`` segments of k/s; in each segment, every block of ``block_rows`` input coordinates is
    dealt to the buckets by a seeded random permutation (coordinate ``order[j]`` goes to bucket ``(j + shift) mod
    k/s``), so buckets are balanced and which coordinates share one is random. Applying it is a gather, a sign flip
    and a segment sum: memory traffic instead of a k-wide matrix product.
    """

    def __init__(self, dim_in: int, dim_out: int, nnz: int = 1, seed: int = 0, device: str | torch.device = "cpu",
                 block_rows: int = 4096, cache_mb: float = 256.0, name: str = "") -> None:
        _check_dims(dim_in, dim_out)
        if nnz < 1 or dim_out % nnz:
            raise ConfigError(f"sparse projection needs dim ({dim_out}) divisible by sparse_nnz ({nnz})",
                              field="features.sparse_nnz", fix="use sparse_nnz 1, or one that divides dim")
        self.dim_in, self.dim_out, self.nnz, self.seed = int(dim_in), int(dim_out), int(nnz), int(seed)
        self.block_rows, self.device, self.name = int(block_rows), torch.device(device), name
        self.seg = self.dim_out // self.nnz
        self.n_blocks = math.ceil(self.dim_in / self.block_rows)
        self._cache = _BlockCache(cache_mb)

    def _make(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        gen = torch.Generator().manual_seed(block_seed(self.seed, self.name + "sparse", b))
        order = torch.stack([torch.randperm(rows, generator=gen) for _ in range(self.nnz)])  # (s, rows)
        signs = torch.randint(0, 2, (self.nnz, rows), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
        shift = torch.randint(0, self.seg, (self.nnz,), generator=gen)
        return order.to(self.device), signs.to(self.device), shift

    def matrix(self) -> torch.Tensor:
        """The whole scaled D×k matrix (tests and small D only)."""
        return self.project(torch.eye(self.dim_in, dtype=torch.float64)).float()

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check_width(grads)
        dtype = torch.float64 if grads.dtype == torch.float64 else torch.float32
        grads = grads.to(self.device, dtype)
        n, seg = grads.shape[0], self.seg
        out = torch.zeros(n, self.dim_out, dtype=dtype, device=self.device)
        for b in range(self.n_blocks):
            order, signs, shift = self._cache.get(b, self._make)
            x = grads[:, b * self.block_rows : b * self.block_rows + order.shape[1]]
            rows = x.shape[1]
            full, rem = divmod(rows, seg)
            for r in range(self.nnz):
                z = x.index_select(1, order[r]).mul_(signs[r].to(dtype))
                part = z[:, : full * seg].view(n, full, seg).sum(1) if full else z.new_zeros(n, seg)
                if rem:  # the block's last partial round of buckets (added, not padded: no copy of z)
                    part[:, :rem] += z[:, full * seg :]
                out[:, r * seg : (r + 1) * seg] += part.roll(int(shift[r]), 1)
        return out.mul_(1.0 / math.sqrt(self.nnz)) if self.nnz > 1 else out

    def fingerprint(self) -> dict[str, Any]:
        fp = {"projection": "sparse", "kind": "countsketch", "nnz": self.nnz, "dim_in": self.dim_in,
              "dim_out": self.dim_out, "seed": self.seed, "block_rows": self.block_rows}
        return fp | ({"name": self.name} if self.name else {})


def make_flat_projector(cfg: dict[str, Any], dim_in: int, device: str | torch.device = "cpu",
                        projection: str | None = None, name: str = "") -> Projector:
    """A dense or sparse projector of flattened gradients from a ``features`` config section."""
    projection = projection or str(cfg.get("projection", "dense"))
    kind = cfg.get("projector", "rademacher")
    if kind not in KINDS:
        raise ConfigError(f"unknown projector {kind!r}", field="features.projector", fix=f"use one of {KINDS}")
    if kind == "none" or int(cfg.get("dim", 0)) <= 0:
        return NoOpProjector(dim_in)
    common = dict(seed=int(cfg.get("seed", 0)), device=device, block_rows=int(cfg.get("block_rows", 4096)),
                  cache_mb=float(cfg.get("cache_mb", 256)), name=name)
    if projection == "sparse":
        return SparseProjector(dim_in, int(cfg["dim"]), int(cfg.get("sparse_nnz", 1)), **common)  # type: ignore[arg-type]
    if projection == "dense":
        return DenseProjector(dim_in, int(cfg["dim"]), kind, **common)  # type: ignore[arg-type]
    raise ConfigError(f"projection {projection!r} cannot project flattened gradients", field="features.projection",
                      fix="use dense or sparse here")


def make_projector(cfg: dict[str, Any], dim_in: int, device: str | torch.device = "cpu",
                   grads: PerSampleGrads | None = None) -> Projector:
    """Build the projector a ``features`` config section names (``projection``, ``projector``, ``dim``, ...).

    ``factored`` needs ``grads`` (the per-sample gradient computer: its model, loss and parameter set).
    """
    projection = str(cfg.get("projection", "dense"))
    if projection not in PROJECTIONS:
        raise ConfigError(f"unknown projection {projection!r}", field="features.projection",
                          fix=f"use one of {PROJECTIONS}")
    if projection != "factored" or cfg.get("projector") == "none" or int(cfg.get("dim", 0)) <= 0:
        return make_flat_projector(cfg, dim_in, device, projection if projection != "factored" else "dense")
    if grads is None:
        raise ConfigError("projection 'factored' needs the model's layers", field="features.projection",
                          fix="use dense or sparse for flattened gradients without a model")
    from datasel.features.factored import FactoredProjector  # factored builds on this module

    return FactoredProjector.from_config(cfg, grads, device)


def inner_product_correlation(feats: torch.Tensor, exact: torch.Tensor, pairs: int | None = 200,
                              seed: int = 0) -> float:
    """Pearson correlation of ``<f_i, f_j>`` with the exact ``<g_i, g_j>`` over ``pairs`` seeded pairs ``i != j``
    (``None``: every pair ``i < j``): the projection quality figure of the benchmark and the tests."""
    n = feats.shape[0]
    if pairs is None:  # from the two Gram matrices: n² numbers, not a (pairs, D) copy of each side
        i, j = torch.triu_indices(n, n, 1)
        f64, e64 = feats.double(), exact.double()
        fp, ex = (f64 @ f64.T)[i, j], (e64 @ e64.T)[i, j]
        return float(torch.corrcoef(torch.stack([fp, ex]))[0, 1])
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (pairs,), generator=gen)
    j = (i + torch.randint(1, n, (pairs,), generator=gen)) % n
    fp = (feats[i].double() * feats[j].double()).sum(1)
    ex = (exact[i].double() * exact[j].double()).sum(1)
    return float(torch.corrcoef(torch.stack([fp, ex]))[0, 1])


class AdamPreconditioner:
    """LESS's Adam-update gradient ``m'/sqrt(v'+eps)`` from the optimizer moments of the chosen parameters."""

    def __init__(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.m, self.v = exp_avg.flatten(), exp_avg_sq.flatten()
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self._scaled: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        """The preconditioned copy of flattened gradients ``(n, D)``."""
        return self.apply_(grads.clone())

    def apply_(self, grads: torch.Tensor, cols: int | torch.Tensor = 0) -> torch.Tensor:
        """Precondition ``grads`` in place and return it. ``cols`` says which columns of the flat gradient its entries
        are: a start (``grads`` is ``(n, ...)`` and each example's entries, flattened, are the columns
        ``[start, start + numel)``: one layer's block, or all of it), or the column of every entry as an index tensor
        that broadcasts against ``grads``.

        The same operations per entry as ``m'/sqrt(v'+eps)`` written out, with one temporary of the size of
        ``grads`` (the written-out form makes five)."""
        mb, vb = self._moments(grads.dtype, grads.device)
        if isinstance(cols, torch.Tensor):
            mb, vb = mb[cols], vb[cols]
        else:
            shape = grads.shape[1:]
            n = shape.numel()
            mb, vb = mb[cols : cols + n].view(shape), vb[cols : cols + n].view(shape)
        den = torch.mul(grads, grads).mul_(1 - self.b2).add_(vb)  # v' = b2 v + (1-b2) g²
        den.add_(self.eps).sqrt_()  # LESS puts eps inside the root (not torch Adam's sqrt(v)+eps)
        return grads.mul_(1 - self.b1).add_(mb).div_(den)  # m' = b1 m + (1-b1) g, over the root

    def _moments(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b1 m, b2 v)`` in ``dtype`` on ``device``, computed once per pair (not per chunk)."""
        key = (dtype, device)
        hit = self._scaled.get(key)
        if hit is None:
            hit = self._scaled[key] = (self.m.to(device, dtype) * self.b1, self.v.to(device, dtype) * self.b2)
        return hit

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
