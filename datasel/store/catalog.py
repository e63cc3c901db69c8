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


def table_files(results: Path) -> dict[str, list[tuple[str, Path]]]:
    """Table name → (run, file) pairs for every Parquet file under ``results/`` (temporaries ignored).

    A file belongs to the first folder on its path that is a declared table (``scores``, ``metrics``…); the folders
    before it name its run (``""`` for the configured experiment, ``quality/noise20`` for a quality-grid run).
    Files under no declared table folder form a view named after their top folder.
    """
    out: dict[str, list[tuple[str, Path]]] = {}
    for f in sorted(results.rglob("*.parquet")):
        rel = f.relative_to(results)
        if any(part.startswith(".") for part in rel.parts):
            continue
        folders = rel.parts[:-1]
        if not folders:
            continue
        idx = next((i for i, part in enumerate(folders) if part in SCHEMAS), None)
        name, run = (folders[idx], "/".join(folders[:idx])) if idx is not None else (folders[0], "")
        out.setdefault(name, []).append((run, f))
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
            for name, entries in table_files(results).items():
                # one SELECT per run so each row carries the run it came from (run_dir; "" = the main experiment)
                parts = []
                for run in sorted({r for r, _ in entries}):
                    rel = ", ".join(f"'{Path(results.name) / f.relative_to(results)}'" for r, f in entries if r == run)
                    parts.append(f"SELECT *, '{run}' AS run_dir FROM read_parquet([{rel}], union_by_name=true)")
                con.execute(f'CREATE VIEW "{name}" AS ' + " UNION ALL BY NAME ".join(parts))
                counts[name] = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                known = "declared" if name in SCHEMAS else "undeclared"
                log.info("catalog view %s (%s schema): %d rows from %d files", name, known, counts[name], len(entries))
        finally:
            os.chdir(cwd)
            con.close()
    return counts


def query(db_path: str | Path, sql: str, retries: int = 5) -> list[tuple]:
    """Run ``sql`` on the catalog read-only and return its rows, retrying a read torn by a concurrent rewrite.

    Tables are replaced atomically, but DuckDB opens a Parquet file more than once per query (footer at bind time,
    row groups at scan time); a rewrite in between surfaces as an I/O or "Invalid data" error, never as wrong rows.
    Such a read is retried; errors in the SQL itself are raised at once.
    """
    import time

    for attempt in range(retries + 1):
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            return con.sql(sql).fetchall()
        except (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException):
            raise
        except duckdb.Error:
            if attempt == retries:
                raise
            log.info("catalog read overlapped a table rewrite; retrying (%d/%d)", attempt + 1, retries)
            time.sleep(0.05 * (attempt + 1))
        finally:
            con.close()
    raise AssertionError("unreachable")
