"""The Alchemist rater (METHODS.md §3): per-sample weights with multi-granularity perception.

An *instance MLP* maps each sample's feature vector to a raw score; the weights of a batch are the softmax of those
scores over the batch. A *group MLP* sees the batch as a whole (the feature mean and variance over the batch) and
gives one batch-level weight in (0, 1) through a sigmoid, multiplying every weight of the batch:

    W_i = softmax_j(s(f_j))_i · σ(g([mean_B f, var_B f]))

The group MLP can be switched off for the ablation; the batch weight is then held at σ(0) = 0.5, its value at
initialization, so the ablation removes the *learned* batch weighting without changing the proxies' step size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from datasel.errors import ConfigError


def _mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    last = nn.Linear(d, out_dim)
    # A zero last layer makes every sample weigh the same at the start (uniform softmax, batch weight 0.5):
    # the rater departs from plain mini-batch training only as far as the meta-gradient pushes it.
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class Rater(nn.Module):
    """Instance MLP (+ optional group MLP) over per-sample feature vectors of width ``in_dim``."""

    def __init__(self, in_dim: int, hidden: list[int] | None = None, group: bool = True,
                 group_hidden: list[int] | None = None) -> None:
        super().__init__()
        if in_dim < 1:
            raise ConfigError(f"rater input width must be positive, got {in_dim}", field="scoring.alchemist.features")
        self.in_dim = in_dim
        self.use_group = group
        self.instance = _mlp(in_dim, list(hidden if hidden is not None else [64]), 1)
        self.group = _mlp(2 * in_dim, list(group_hidden if group_hidden is not None else [32]), 1) if group else None

    def raw_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """The instance MLP's raw score per sample, shape (B,). This is the per-sample *rating*: the batch softmax
        is monotone in it, so it orders samples the way the weights would in any batch."""
        return self.instance(feats).squeeze(-1)

    def batch_weight(self, feats: torch.Tensor) -> torch.Tensor:
        """The group MLP's weight for the whole batch (a 0-d tensor), from the batch's feature mean and variance."""
        if self.group is None:
            return feats.new_tensor(0.5)
        stats = torch.cat([feats.mean(0), feats.var(0, unbiased=False)])
        return torch.sigmoid(self.group(stats)).squeeze(-1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Weights W_i for one batch, shape (B,); they sum to the batch weight."""
        return torch.softmax(self.raw_scores(feats), dim=0) * self.batch_weight(feats)


def weights_fn(rater: Rater, params: Mapping[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """W(μ) as a pure function of the rater parameters μ, for ``torch.func`` transforms."""
    return functional_call(rater, dict(params), (feats,))


@torch.no_grad()
def rate(rater: Rater, feats: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
    """Rate every sample once: the instance MLP's raw score, in chunks so memory does not grow with N."""
    rater.eval()
    out = [rater.raw_scores(feats[i : i + chunk_size]) for i in range(0, feats.shape[0], chunk_size)]
    return torch.cat(out) if out else feats.new_zeros(0)
