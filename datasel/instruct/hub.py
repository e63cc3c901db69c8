"""Where a causal LM named in ``instruct.model`` lives on disk (no torch: resolved when the Snakefile is parsed).

Kept as the instruct chain's entry point; the resolution itself is :mod:`datasel.models.locate`, shared by every
model loader of datasel.
"""

from __future__ import annotations

from pathlib import Path

from datasel.models.locate import locate_model, looks_like_hub_name

__all__ = ["looks_like_hub_name", "resolve_model_dir"]


def resolve_model_dir(path: str, field: str = "instruct.model.path", cache_dir: str | Path | None = None) -> str:
    """``path`` itself when it is a folder (or not a hub name: the folder checks then name what is wrong), a
    packaged model's location, or the cached snapshot folder of the hub model ``path``; a hub name missing from the
    cache is refused here."""
    return str(locate_model(path, field, cache_dir=cache_dir, must_exist=False))
