"""Builders for the models a config can name.

A builder takes the model's config section and the dataset meta (input shape, number of classes, vocabulary) so
the same config works on any data of the right kind. ``kinds`` names the data kinds (``meta['kind']``) a model
takes, so a text column with a vector model is refused before any training starts.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from datasel.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}
MODEL_KINDS: dict[str, tuple[str, ...] | None] = {}

_SUGGEST = {"text": "hf_classifier (a Hugging Face sequence classifier) or python (your own builder)",
            "vector": "mlp, cnn1d or python (your own builder)",
            "triplets": "hf_embedding (an embedding model)"}
_CAUSE = {"text": "the data has a text column (data.text_column)",
          "triplets": "the data is (query, positive, negative) triplets"}


def register_model(name: str, kinds: Sequence[str] | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder ``fn(cfg, meta[, where])``; ``kinds=None`` accepts any data kind."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        MODEL_KINDS[name] = tuple(kinds) if kinds is not None else None
        return fn

    return deco


def load_builtin_models() -> None:
    """Import every module of ``datasel.models`` so its builders register themselves (a new file needs no list:
    a fixed list here once left ``hf_embedding`` unregistered); cheap, heavy imports happen inside builders."""
    import datasel.models

    for mod in pkgutil.iter_modules(datasel.models.__path__):
        importlib.import_module(f"datasel.models.{mod.name}")


def check_model_kind(cfg: dict[str, Any], meta: dict[str, Any], where: str = "model") -> None:
    """Refuse a model that does not take this data kind (naming the data's kind and the models that do)."""
    load_builtin_models()
    name, kind = cfg.get("name"), meta.get("kind")
    kinds = MODEL_KINDS.get(str(name))
    if kind and kinds is not None and kind not in kinds:
        cause = _CAUSE.get(str(kind), "the data is numeric vectors")
        raise ConfigError(f"model '{name}' takes {'/'.join(kinds)} inputs, but {cause}", field=f"{where}.name",
                          fix=f"for {kind} data use {_SUGGEST.get(str(kind), 'a model of that kind')}")


def build_model(cfg: dict[str, Any], meta: dict[str, Any], where: str = "model") -> nn.Module:
    """Build the model named by ``cfg['name']`` for a dataset described by ``meta``."""
    load_builtin_models()
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'", field=f"{where}.name",
                          fix=f"use one of: {', '.join(sorted(MODELS))}")
    check_model_kind(cfg, meta, where)
    fn = MODELS[name]
    if "where" in inspect.signature(fn).parameters:
        return fn(cfg, meta, where=where)
    return fn(cfg, meta)
