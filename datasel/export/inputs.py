"""Find a selection among the run's existing selections and read the tables an export or ``datasel show`` needs.

A selection is named, never given as a path: the name must be one of the stems listed under
``results/selections/``, so a name with ``/``, ``..`` or an absolute path can neither read nor write elsewhere.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datasel.errors import DataError, DataselError
from datasel.selection.draws import one_draw
from datasel.store import read_table

# what a selection file stem looks like (the select rule's `{policy}_keep{pct}`); anything else is refused by name
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LM_POOL_SOURCE = "source_pool.parquet"  # instruction data: the pool file as read, beside examples.parquet


@dataclass(frozen=True)
class Inputs:
    """One selection with the examples table and meta of its run."""

    results: Path
    name: str
    path: Path
    selection: pl.DataFrame
    examples: pl.DataFrame
    meta: dict[str, Any]


def available_selections(results: Path) -> list[str]:
    """The selection names of a run: the stems of ``results/selections/*.parquet`` (temporary files excluded)."""
    folder = Path(results) / "selections"
    return sorted(p.stem for p in folder.glob("*.parquet") if not p.name.startswith(".") and p.is_file())


def selection_path(results: str | Path, name: str) -> Path:
    """The table of the selection called ``name``, refusing anything that is not one of the listed names."""
    results = Path(results)
    if not (results / "selections").is_dir():
        raise DataselError("no selections folder (has the workflow run here?)", file=results / "selections",
                           field="--results", fix="run the workflow first (snakemake --cores all), or point "
                                                  "--results at the run's results folder")
    names = available_selections(results)
    listing = f"use one of: {', '.join(names)}" if names else "run the workflow first (snakemake --cores all)"
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise DataselError(f"'{name}' is not a selection name (a name, not a path: no '/', '..' or leading '.')",
                           field="SELECTION", fix=listing)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        raise DataselError(f"unknown selection '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                           file=results / "selections", field="SELECTION", fix=listing)
    # built from the folder and a listed stem, so the path cannot leave results/selections
    return results / "selections" / f"{name}.parquet"


def read_meta(results: Path) -> dict[str, Any]:
    path = results / "examples" / "meta.json"
    if not path.is_file():
        raise DataError("the examples' meta.json is missing", file=path,
                        fix="rerun the prepare step (snakemake --cores all results/examples/examples.parquet)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read meta.json ({exc})", file=path, fix="delete it and rerun the prepare step") from None
    if not isinstance(meta, dict):
        raise DataError("meta.json is not a JSON object", file=path, fix="delete it and rerun the prepare step")
    return meta


def load_inputs(results: str | Path, name: str) -> Inputs:
    """Read one selection, the examples table and meta.json, each refused with a clear error when missing."""
    results = Path(results)
    path = selection_path(results, name)
    # a stochastic policy's table holds one subset per training seed: export and show the smallest seed's
    selection = one_draw(read_table(path, "selections"), source=str(path))
    meta = read_meta(results)
    examples = read_table(results / "examples" / "examples.parquet", "examples")
    return Inputs(results, name, path, selection, examples, meta)
