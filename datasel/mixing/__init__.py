"""Online data mixing: Dynamic Gradient Alignment (METHODS.md §2), basis-distribution reweighting for many
domains, static baselines (uniform, natural, specific-only, importance sampling) and per-example alignment scores."""

from datasel.mixing.dga import eg_update, train_mixture
from datasel.mixing.task import MixingTask, build_task

__all__ = ["MixingTask", "build_task", "eg_update", "train_mixture"]
