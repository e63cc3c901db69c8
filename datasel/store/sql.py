"""Quoting for the few SQL texts DuckDB cannot take parameters in (``CREATE VIEW`` bodies are stored as text).

Names and paths are never pasted into SQL raw: string literals double their single quotes, identifiers double their
double quotes, and a path used as a DuckDB glob has its glob characters escaped so a folder named ``a[1]`` or
``what?`` is matched literally. Anything that can take a parameter (``INSERT``, queries) uses ``?`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasel.errors import DataselError

_GLOB_CHARS = "*?["


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (standard SQL: a quote inside is doubled; backslashes are plain)."""
    if "\x00" in text:
        raise ValueError("a SQL literal cannot hold a NUL character")
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (a double quote inside is doubled)."""
    if "\x00" in name:
        raise ValueError("a SQL identifier cannot hold a NUL character")
    return '"' + name.replace('"', '""') + '"'


def glob_escape(path: str | os.PathLike) -> str:
    """``path`` with DuckDB's glob characters matched literally: each of ``*``, ``?``, ``[`` becomes a one-character
    class (``[*]``, ``[?]``, ``[[]``).

    DuckDB reads a backslash in a globbed path as a separator, so a path holding one cannot be globbed; the caller
    lists such files one by one (see :func:`has_glob_chars`) or refuses.
    """
    text = os.fspath(path)
    if "\\" in text:
        raise DataselError(
            "a folder or file name holds a backslash, which DuckDB's file globs cannot match",
            file=text,
            fix="rename the folder without '\\'",
        )
    return "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in text)


def has_glob_chars(path: str | os.PathLike) -> bool:
    """Whether DuckDB would treat ``path`` as a glob pattern rather than a file name."""
    return any(c in os.fspath(path) for c in _GLOB_CHARS)


def check_database_path(path: str | os.PathLike) -> None:
    """Refuse a database path DuckDB would misread: it takes "?" as the start of connection options (the WAL then
    goes elsewhere) and "\\" as a separator, so a catalog there could be neither written nor opened."""
    text = os.fspath(Path(path).resolve())
    for char in ("?", "\\"):
        if char in text:
            raise DataselError(
                f"DuckDB cannot open a database whose path holds {char!r}",
                file=text,
                fix=f"rename the folder without {char!r}, or keep the results folder under a folder without one",
            )
