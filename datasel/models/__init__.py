"""Model registry: config strings → ``nn.Module`` builders.

The registry is imported on first use, so that :mod:`datasel.models.locate` (model paths, read while the Snakefile
is parsed) does not import torch.
"""

from typing import Any

__all__ = ["MODELS", "build_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from datasel.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'datasel.models' has no attribute {name!r}")
