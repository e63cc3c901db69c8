"""Meta-learned data raters: the rater network and its bilevel (meta-gradient) trainer, kept apart from the
Scorer that reads tables so they can be reused and tested on plain tensors."""

from datasel.meta.bilevel import BilevelConfig, MetaHistory, train_rater
from datasel.meta.rater import Rater, rate

__all__ = ["BilevelConfig", "MetaHistory", "Rater", "rate", "train_rater"]
