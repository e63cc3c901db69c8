"""Your own PyTorch model: ``model: {name: python, builder: "package.module:function", ...}``.

The contract (checked on one batch before any training, :meth:`datasel.tasks.Task.check_model`):

- ``function(cfg, meta)`` is called with the model's config section (every key, so a builder takes its own
  settings such as ``hidden: 64``) and the dataset meta (``kind``, ``num_classes``, ``classes``, ``input_dim`` for
  vector data); it returns a ``torch.nn.Module``.
- Vector data: the module is called as ``model(x)`` with ``x`` a float32 tensor ``(B, input_dim)`` (standardized
  when ``data.standardize`` is on). Text data: ``model(input_ids=..., attention_mask=...)``, both ``(B, L)`` long
  tensors from the tokenizer named by ``tokenizer:`` (default: the all-MiniLM-L6-v2 tokenizer), ``max_length: L``.
- It returns logits ``(B, num_classes)``; the loss is cross-entropy on them, per example (EL2N reads their softmax).
- Parameter sets: ``last_layer`` is the last ``nn.Linear`` registered in the module (``named_modules()`` order), so
  define the classifier head last; ``lora`` matches parameters named ``lora_*``; a list of globs names parameters.
  Only parameters with ``requires_grad`` are trained and differentiated.

The module is imported from ``sys.path`` (installed packages, ``PYTHONPATH``) and, failing that, from the
working directory the workflow runs in.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from datasel.errors import ConfigError
from datasel.models.registry import register_model


def _import(module: str, where: str) -> Any:
    top = module.split(".")[0]
    try:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != top or os.getcwd() in sys.path:
                raise
            sys.path.append(os.getcwd())  # a module file next to the config, as a user would expect
            return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ConfigError(f"cannot import module '{module}' ({exc})", field=f"{where}.builder",
                              fix="put the module on PYTHONPATH or in the working directory, or install its package") \
                from None
        raise ConfigError(f"importing '{module}' failed: {exc}", field=f"{where}.builder",
                          fix=f"install '{exc.name}' or fix the import in {module}") from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"importing '{module}' failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          field=f"{where}.builder", fix="fix the error in that module") from None


@register_model("python")
def build_python_model(cfg: dict[str, Any], meta: dict[str, Any], where: str = "model") -> nn.Module:
    spec = cfg.get("builder")
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"builder must be 'package.module:function', got {spec!r}", field=f"{where}.builder",
                          fix="e.g. builder: mymodels:build_classifier")
    module, attr = spec.split(":")
    fn = getattr(_import(module, where), attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"module '{module}' has no function '{attr}'", field=f"{where}.builder",
                          fix=f"define def {attr}(cfg, meta) -> torch.nn.Module in {module}")
    try:
        model = fn(dict(cfg), dict(meta))
    except Exception as exc:
        raise ConfigError(f"builder {spec} raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                          field=f"{where}.builder", fix="the builder is called as fn(model_cfg, meta); fix it") \
            from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"builder {spec} returned a {type(model).__name__}, not a torch.nn.Module",
                          field=f"{where}.builder", fix="return an nn.Module (its forward returns logits (B, C))")
    return model
