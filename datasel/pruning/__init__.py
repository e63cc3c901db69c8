"""Parameter pruning of embedding models: GAPrune's Domain Alignment Importance and the baselines it is compared with.

- :mod:`.stats`: Fisher information and mean gradients of InfoNCE on domain and general triplets, one pass.
- :mod:`.dai`: gradient alignment and the DAI score (the method).
- :mod:`.baselines`: magnitude, Fisher-on-domain-only and random scores at the same sparsity.
- :mod:`.masks`: candidate tensors, global or per-layer budgets, applying masks.
- :mod:`.pipeline`: prune → evaluate → retrain with the mask fixed → evaluate; the Snakemake steps.
"""

from datasel.pruning.masks import apply_masks, candidate_params, masks_from_scores, sparsity_of
from datasel.pruning.methods import PRUNERS, score_weights
from datasel.pruning.stats import GradStats, gradient_statistics

__all__ = [
    "PRUNERS",
    "GradStats",
    "apply_masks",
    "candidate_params",
    "gradient_statistics",
    "masks_from_scores",
    "score_weights",
    "sparsity_of",
]
