"""The DuckDB catalog: one view per declared table schema, so users query every table with SQL from any folder.

Which files form a view is declared by the schema (``TableSchema.files`` in :mod:`datasel.store.tables`): glob
patterns relative to a run folder, e.g. ``scores/*.parquet`` or ``examples/examples.parquet``. A file under
``results/`` belongs to the first schema whose pattern matches it below some run folder (``""`` for the configured
experiment, ``quality/noise20`` for a quality-grid run); a file that matches none (a stage's by-product, a stray
file) joins no view, so DGA's ``examples/dga_domains.parquet`` is its own ``dga_domains`` view, not extra
``examples`` rows.

Views are always true and independent of the current folder:

- each view reads *absolute* globs (``/abs/results/selections/*.parquet``), evaluated when a query runs, so a table
  written after the catalog (a selection built as an explicit target) appears without a rebuild, and a catalog
  opened from another project's folder still reads its own run's files;
- the workflow also rebuilds the catalog whenever a table it covers changes (new run folders appear then);
- a path is never pasted into SQL: literals and identifiers are quoted (:mod:`datasel.store.sql`) and glob
  characters escaped, so any folder name works and none can run a statement.

The database is written under a temporary name, checkpointed (no ``.wal`` left), re-opened to check that every view
exists and can be counted, and only then renamed into place: a catalog with missing views is never reported built.
A table ``datasel_catalog`` records the results folder and each view's row count at build time.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from datasel.errors import DataselError
from datasel.store.atomic import atomic_path, incomplete
from datasel.store.sql import check_database_path, glob_escape, has_glob_chars, sql_identifier, sql_literal
from datasel.store.tables import SCHEMAS

log = logging.getLogger(__name__)

MANIFEST = "datasel_catalog"
T = TypeVar("T")

# Errors in the SQL itself: retrying cannot help. Anything else (I/O, a file missing or torn mid-rewrite) is retried.
_SQL_ERRORS = (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException, duckdb.ConversionException,
               duckdb.OutOfRangeException, duckdb.SyntaxException, duckdb.NotImplementedException,
               duckdb.PermissionException, duckdb.ConstraintException, duckdb.TypeMismatchException)


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Glob match of path segments, ``**`` spanning zero or more folders (DuckDB's glob semantics)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def table_files(results: str | Path) -> dict[str, dict[tuple[str, str], list[Path]]]:
    """View name → {(run, pattern): files} for the Parquet files under ``results/`` that a schema declares.

    The run is the folder between ``results/`` and the pattern (the shortest one that matches). Hidden paths
    (temporaries ``.tmp-*``) and files no schema declares are left out; the latter are logged.
    """
    results = Path(results)
    out: dict[str, dict[tuple[str, str], list[Path]]] = {}
    for f in sorted(results.rglob("*.parquet")):
        rel = f.relative_to(results).parts
        if any(part.startswith(".") for part in rel):
            continue
        found = next(((s.name, "/".join(rel[:k]), pat) for k in range(len(rel)) for s in SCHEMAS.values()
                      for pat in s.files if _matches(rel[k:], tuple(pat.split("/")))), None)
        if found is None:
            log.info("catalog: %s matches no declared table; not in any view", f)
            continue
        name, run, pat = found
        out.setdefault(name, {}).setdefault((run, pat), []).append(f)
    return out


def _source_sql(results: Path, run: str, pattern: str, files: list[Path]) -> str:
    """``read_parquet`` of one run's files: an escaped absolute glob, or the files one by one where DuckDB cannot
    glob the path (a backslash in it)."""
    base = results / run if run else results
    opts = "union_by_name = true, hive_partitioning = false"  # a folder named k=v must not become a column
    if "\\" not in os.fspath(base / pattern):
        return f"read_parquet({sql_literal(glob_escape(base) + '/' + pattern)}, {opts})"
    bad = [f for f in files if has_glob_chars(f)]
    if bad:
        glob_escape(bad[0])  # raises the clear refusal (backslash and glob characters in one path)
    listed = ", ".join(sql_literal(os.fspath(f)) for f in files)
    return f"read_parquet([{listed}], {opts})"


def view_sql(results: str | Path, parts: dict[tuple[str, str], list[Path]]) -> str:
    """The body of one view: its runs' sources, each row tagged with the run it came from (``run_dir``)."""
    results = Path(results)
    selects = [f"SELECT *, {sql_literal(run)} AS run_dir FROM {_source_sql(results, run, pat, files)}"
               for (run, pat), files in sorted(parts.items())]
    return " UNION ALL BY NAME ".join(selects)


def build_catalog(results: str | Path, db_path: str | Path) -> dict[str, int]:
    """(Re)build the catalog over ``results/`` at ``db_path``; returns the row count of each view.

    Raises :class:`DataselError` (and leaves any previous catalog in place) when a view cannot be created or
    counted, or the disk fills while the database is written.
    """
    results = Path(results).resolve()  # views hold absolute paths: they must not depend on the reader's folder
    db_path = Path(db_path)
    check_database_path(db_path)
    sources = table_files(results)
    counts: dict[str, int] = {}

    def verify(tmp: Path) -> None:
        _verify_catalog(tmp, db_path, set(sources))
        # a WAL next to the old file belongs to it; DuckDB would replay it onto the new database once renamed
        db_path.with_name(db_path.name + ".wal").unlink(missing_ok=True)

    own_wal: Path | None = None
    try:
        with atomic_path(db_path, verify=verify) as tmp:
            own_wal = tmp.with_name(tmp.name + ".wal")
            tmp.unlink()  # duckdb refuses to open an empty file as a database
            con = duckdb.connect(os.fspath(tmp))
            try:
                for name, parts in sources.items():
                    con.execute(f"CREATE VIEW {sql_identifier(name)} AS {view_sql(results, parts)}")
                    counts[name] = con.execute(f"SELECT count(*) FROM {sql_identifier(name)}").fetchone()[0]
                    log.info("catalog view %s: %d rows from %d files", name, counts[name],
                             sum(len(f) for f in parts.values()))
                con.execute(f"CREATE TABLE {MANIFEST} "
                            "(results VARCHAR, view_name VARCHAR, files BIGINT, rows_at_build BIGINT)")
                con.executemany(f"INSERT INTO {MANIFEST} VALUES (?, ?, ?, ?)",
                                [[os.fspath(results), name, sum(len(f) for f in sources[name].values()), n]
                                 for name, n in counts.items()])
                con.execute("CHECKPOINT")  # everything into the database file now, not into a .wal
            finally:
                con.close()
    finally:
        if own_wal is not None:  # a failed build's WAL (a concurrent build's temporaries are left alone)
            own_wal.unlink(missing_ok=True)
    return counts


def _verify_catalog(tmp: Path, db_path: Path, expected: set[str]) -> None:
    """Re-open the written database: no WAL left, every expected view present and countable, the manifest there."""
    if tmp.with_name(tmp.name + ".wal").exists():
        raise incomplete(db_path, "DuckDB left a write-ahead log; the views are not all in the database file")
    try:
        con = duckdb.connect(os.fspath(tmp), read_only=True)
    except duckdb.Error as exc:
        raise incomplete(db_path, f"the database cannot be re-opened ({str(exc).splitlines()[0][:160]})") from exc
    try:
        views = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW'").fetchall()}
        if views != expected:
            raise incomplete(db_path, f"views {sorted(expected - views)} are missing")
        listed = {r[0] for r in con.execute(f"SELECT view_name FROM {MANIFEST}").fetchall()}
        if listed != expected:
            raise incomplete(db_path, "the manifest table does not list every view")
        for name in sorted(expected):
            con.execute(f"SELECT count(*) FROM {sql_identifier(name)}").fetchone()
    except duckdb.Error as exc:
        raise incomplete(db_path, f"the database does not read back ({str(exc).splitlines()[0][:160]})") from exc
    finally:
        con.close()


def _run(db_path: str | Path, sql: str, fetch: Callable[[Any], T], retries: int) -> T:
    """Run ``sql`` read-only on the catalog, retrying reads that a concurrent rewrite or rerun broke."""
    db_path = Path(db_path)
    check_database_path(db_path)
    last: duckdb.Error | None = None
    for attempt in range(retries + 1):
        if not db_path.is_file():
            # Snakemake removes the catalog before its rule reruns: wait for the rebuild when one can be running
            if attempt == retries or not _rebuild_may_be_running(db_path):
                raise DataselError("there is no catalog here", file=db_path,
                                   fix="run the workflow (snakemake) or `datasel catalog --results <results folder>`")
        else:
            try:
                con = duckdb.connect(os.fspath(db_path), read_only=True)
                try:
                    return fetch(con.sql(sql))
                except _SQL_ERRORS as exc:
                    raise DataselError(f"the query failed: {str(exc).strip()}", field="sql",
                                       fix=f"check the SQL; the catalog's views: {', '.join(_views(con))}") from None
                finally:
                    con.close()
            except duckdb.Error as exc:
                # Tables are replaced atomically, but DuckDB opens a Parquet file more than once per query (footer at
                # bind time, row groups at scan time), and Snakemake removes a job's output before rerunning it: such
                # a read fails (never returns wrong rows) and is retried, waiting longer each time.
                last = exc
        if attempt < retries:
            log.info("catalog read failed (%s); retrying (%d/%d)", str(last).splitlines()[0][:120] if last else
                     "no catalog file", attempt + 1, retries)
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise _read_failure(db_path, last)


def _rebuild_may_be_running(db_path: Path) -> bool:
    """A build's temporary next to the catalog, or a Snakemake run holding locks in the folder above results/."""
    if any(db_path.parent.glob(f".tmp-{glob.escape(db_path.name)}.*")):
        return True
    locks = db_path.parent.parent / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def _views(con: duckdb.DuckDBPyConnection) -> list[str]:
    try:
        return [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW' ORDER BY 1").fetchall()]
    except duckdb.Error:
        return []


def _read_failure(db_path: Path, exc: duckdb.Error | None) -> DataselError:
    """The clear error after the retries: a moved results folder, or a table missing / being rewritten."""
    first = str(exc).strip().splitlines()[0][:300] if exc else "unknown error"
    built_for = None
    try:
        con = duckdb.connect(os.fspath(db_path), read_only=True)
        try:
            built_for = con.execute(f"SELECT any_value(results) FROM {MANIFEST}").fetchone()[0]
        finally:
            con.close()
    except duckdb.Error:
        pass
    if built_for and not Path(built_for).is_dir():
        return DataselError(f"the catalog reads the results folder {built_for}, which no longer exists ({first})",
                            file=db_path, fix="rebuild it where the results are now: "
                            "`datasel catalog --results <results folder>`")
    return DataselError(
        f"a table the query reads is missing or was being rewritten, after {first!r} on every retry",
        file=db_path,
        fix="a workflow job is probably rerunning that table: rerun the query when it has finished; if the file is "
        "gone for good, rebuild the catalog (`datasel catalog --results <results folder>`)",
    )


def query(db_path: str | Path, sql: str, retries: int = 8) -> list[tuple]:
    """Run ``sql`` on the catalog read-only and return its rows (``[]`` for a statement without a result).

    A read broken by a concurrent rewrite, or by a file a rerun removed, is retried with growing waits (about 7 s
    in all by default), then reported as a :class:`DataselError`; an error in the SQL is reported at once.
    """
    return _run(db_path, sql, lambda rel: rel.fetchall() if rel is not None else [], retries)


def query_frame(db_path: str | Path, sql: str, retries: int = 8) -> Any:
    """Like :func:`query`, as a polars DataFrame (``None`` for a statement without a result)."""
    return _run(db_path, sql, lambda rel: rel.pl() if rel is not None else None, retries)
