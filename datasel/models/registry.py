"""Builders for the models a config can name.

A builder takes the model's config section and the dataset meta (input shape, number of classes, vocabulary) so
the same config works on any data of the right kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from datasel.errors import ConfigError

ModelBuilder = Callable[[dict[str, Any], dict[str, Any]], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        return fn

    return deco


def build_model(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
    """Build the model named by ``cfg['name']`` for a dataset described by ``meta``."""
    from datasel.models import gpt, vision  # noqa: F401  (registration side effect)

    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'", field="model.name", fix=f"use one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](cfg, meta)
