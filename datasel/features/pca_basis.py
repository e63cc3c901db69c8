"""A data-dependent basis for the factored projection: the Kronecker principal directions of per-example gradients.

Random sketches are unbiased, but an oblivious map to k dimensions carries inner-product noise of about
``‖g_i‖²‖g_j‖²/k`` whatever it is (dense JL, CountSketch or factored): on the 1M-parameter MLP of
``benchmarks/features.py`` that caps the correlation at k = 512 near 0.94. Gradients are far from isotropic, so a
basis fitted to them does much better. For one Linear/Conv layer, with ``G_i = Σ_t g_t a_tᵀ``:

- the output side's basis is the top eigenvectors of ``Σ_i G_i G_iᵀ`` and the input side's of ``Σ_i G_iᵀ G_i``
  (the left and right singular directions of the stacked gradients: the best one-sided truncations of ``G``). They
  come from the layer taps without forming ``G``: ``G Gᵀ = g3ᵀ (a3 a3ᵀ) g3`` with ``g3``/``a3`` the ``(P, fan)``
  sides at the ``P`` positions;
- every pair ``(i, j)`` of an output and an input direction is one candidate coordinate ``u_iᵀ G v_j``, a bias
  direction ``u_iᵀ b`` another; the ``k`` candidates of largest mean square on the fitted rows are kept, across all
  layers at once, so the budget goes where the gradient's energy is (LoGra's PCA initialisation, Choe et al. 2024,
  with the per-layer split chosen by the data instead of fixed).

The map is an orthonormal projection: inner products of features are those of the gradients' captured part, so
they run low by the energy left out (printed at fit time) and correlate with the exact ones far better than a
random sketch of the same size. The fit is deterministic (float64 sums, ``eigh``, signs fixed so that each vector's
largest entry is positive, ties kept in index order); the basis digest goes into the projection fingerprint, so
features of different bases are never mixed.
"""

from __future__ import annotations

import torch


class SideMoments:
    """Running ``Σ_i G_i G_iᵀ`` (output side) and ``Σ_i G_iᵀ G_i`` (input side) of one layer, in float64."""

    def __init__(self, fan_out: int, fan_in: int, device: torch.device) -> None:
        self.out = torch.zeros(fan_out, fan_out, dtype=torch.float64, device=device)
        self.inp = torch.zeros(fan_in, fan_in, dtype=torch.float64, device=device)
        self.bias = torch.zeros((), dtype=torch.float64, device=device)  # Σ_i ‖Σ_t g_t‖²: the bias gradients' energy

    def add_sides(self, g3: torch.Tensor, a3: torch.Tensor) -> None:
        """Add examples given by their sides ``g3 (B, P, fan_out)`` and ``a3 (B, P, fan_in)``."""
        g3, a3 = g3.double(), a3.double()
        b, p = g3.shape[0], g3.shape[1]
        self.bias += g3.sum(1).pow(2).sum()
        if p == 1:  # G = g aᵀ: G Gᵀ = ‖a‖² g gᵀ
            ga = g3[:, 0] * a3[:, 0].norm(dim=1, keepdim=True)
            ag = a3[:, 0] * g3[:, 0].norm(dim=1, keepdim=True)
            self.out.addmm_(ga.T, ga)
            self.inp.addmm_(ag.T, ag)
        else:
            ka, kg = a3 @ a3.transpose(1, 2), g3 @ g3.transpose(1, 2)  # (B, P, P) position Gram matrices
            self.out.addmm_(g3.reshape(b * p, -1).T, (ka @ g3).reshape(b * p, -1))
            self.inp.addmm_(a3.reshape(b * p, -1).T, (kg @ a3).reshape(b * p, -1))

    def add_weights(self, w: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Add examples given by their weight (and bias) gradients ``w (B, fan_out, fan_in)``, ``bias (B, fan_out)``
        (the flattened-gradient path)."""
        if bias is not None:
            self.bias += bias.double().pow(2).sum()
        w = w.double()
        b, fo, fi = w.shape
        wo = w.permute(1, 0, 2).reshape(fo, b * fi)
        self.out.addmm_(wo, wo.T)
        wi = w.reshape(b * fo, fi)
        self.inp.addmm_(wi.T, wi)


def top_directions(moment: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading eigenvectors of a symmetric PSD matrix as rows, float32 on the CPU, signs fixed."""
    _, vecs = torch.linalg.eigh(moment.cpu())
    top = vecs.flip(1)[:, :rank].T.contiguous()  # eigh sorts ascending
    pivot = top.abs().argmax(1)
    signs = torch.sign(top.gather(1, pivot[:, None]))
    return (top * signs).float()


def keep_columns(energy: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of ``energy`` (ties in index order), in increasing order."""
    order = torch.sort(-energy.cpu(), stable=True).indices[:k]
    return torch.sort(order).values
