"""The DuckDB catalog: one view per table folder under ``results/``, so users query every table with SQL.

Views read the Parquet files in place (relative paths, so the catalog works from the folder that holds
``results/``); the database is rebuilt under a temporary name and renamed, so readers never see a half-made one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb

from datasel.store.tables import SCHEMAS, atomic_path

log = logging.getLogger(__name__)


def table_folders(results: Path) -> dict[str, list[Path]]:
    """Table name → its Parquet files (ignoring temporaries), for every folder of ``results/`` that holds any."""
    out = {}
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.rglob("*.parquet") if not f.name.startswith("."))
        if files:
            out[folder.name] = files
    return out


def build_catalog(results: str | Path, db_path: str | Path) -> dict[str, int]:
    """(Re)build the catalog; returns the row count of each view."""
    results = Path(results).resolve()
    counts = {}
    cwd = os.getcwd()
    with atomic_path(db_path) as tmp:
        tmp.unlink()  # duckdb refuses to open an empty file as a database
        con = duckdb.connect(str(tmp))
        # views bind their relative paths at creation, so create them from where users will query them
        os.chdir(results.parent)
        try:
            for name, files in table_folders(results).items():
                rel = [str(Path(results.name) / f.relative_to(results)) for f in files]
                file_list = ", ".join(f"'{p}'" for p in rel)
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{file_list}], union_by_name=true)')
                counts[name] = con.execute(
                    f"SELECT count(*) FROM read_parquet([{', '.join(repr(str(f)) for f in files)}], union_by_name=true)"
                ).fetchone()[0]
                known = "declared" if name in SCHEMAS else "undeclared"
                log.info("catalog view %s (%s schema): %d rows from %d files", name, known, counts[name], len(files))
        finally:
            os.chdir(cwd)
            con.close()
    return counts
