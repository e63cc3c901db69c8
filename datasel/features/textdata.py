"""A small labelled text dataset from the Python standard library's docstrings (label = the module), for the
transformer feature path without any download:  ``python -m datasel.features.textdata data/stdlib_docstrings.jsonl``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import polars as pl

from datasel.store import atomic_path

MODULES = ("json", "re", "string", "os", "pathlib", "collections", "itertools", "functools")


def stdlib_docstrings(modules: tuple[str, ...] = MODULES, per_module: int = 40, max_chars: int = 400) -> pl.DataFrame:
    """One row per public, documented member (deterministic: sorted names, first ``per_module`` kept)."""
    rows = []
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        kept = 0
        for name in sorted(dir(mod)):
            doc = inspect.getdoc(getattr(mod, name, None)) if not name.startswith("_") else None
            if doc and len(doc) > 30 and kept < per_module:
                rows.append({"id": f"{mod_name}.{name}", "text": doc[:max_chars], "label": mod_name})
                kept += 1
    return pl.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["data/stdlib_docstrings.jsonl"])[0])
    with atomic_path(out) as tmp:
        stdlib_docstrings().write_ndjson(tmp)
    print(out)


if __name__ == "__main__":
    main()
