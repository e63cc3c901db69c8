"""Scoring methods, one module each, registered by name in :data:`SCORERS`."""

from datasel.scoring.base import SCORERS, ScoreInputs, Scorer, finalize_scores

__all__ = ["SCORERS", "ScoreInputs", "Scorer", "finalize_scores"]
