"""Model registry: config strings → ``nn.Module`` builders."""

from datasel.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
