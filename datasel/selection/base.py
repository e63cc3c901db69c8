"""The selection protocol: a policy turns (examples, optional scores, kept fraction) into a selection table.

A selection table has one row per training example: ``selection, example_id, selected, weight, position``.
``position`` is the curriculum order among selected rows (null when the order does not matter).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import polars as pl

from datasel.errors import ConfigError
from datasel.registry import Registry


class Policy(ABC):
    """A selection policy; ``needs_score`` says whether it reads a score table."""

    needs_score: ClassVar[bool] = True
    # whether per-class quotas make sense; a policy that ignores the kept count (``full``) opts out
    stratifiable: ClassVar[bool] = True
    # whether per-class quotas apply when the entry does not say ``stratify``: a score ranking concentrates on the
    # classes the proxy finds hard (measured: a 70% EL2N-offset subset kept 48% of one class and 79% of another),
    # so score-ranked policies keep the observed class mix unless ``stratify: false``
    stratify_by_default: ClassVar[bool] = True
    # whether ``choose`` draws random numbers: then every training seed trains on its own draw
    # (datasel.selection.draws), so the seed spread covers the luck of the draw as well as training noise
    draws_random: ClassVar[bool] = False

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @abstractmethod
    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        """Return ``example_id, weight`` (+ optional ``position``) for the kept rows of ``pool``.

        ``pool`` holds the training examples (``example_id, label``) joined with ``score`` and ``rank`` when the
        policy reads a score; it is sorted by ``rank`` (best first), or by ``example_id`` otherwise.
        """

    def stochastic(self) -> bool:
        """Whether this entry's subset depends on the seed (a policy whose config decides overrides this)."""
        return self.draws_random


def stratify_default(policy: Policy) -> bool:
    """Whether ``policy`` is class-stratified when its entry has no ``stratify`` key: score-ranked policies are."""
    return policy.needs_score and policy.stratifiable and policy.stratify_by_default


POLICIES: Registry[type[Policy]] = Registry("selection policy", "datasel.selection")


def kept_count(n: int, fraction: float, where: str = "selection.fractions") -> int:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"kept fraction {fraction} is outside (0, 1]", field=where, fix="use a value in (0, 1]")
    return max(1, round(n * fraction))
