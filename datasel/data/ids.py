"""Stable example ids: a hash of the source name and the row's content, never of its position."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from datasel.errors import DataError


def content_hash(payload: bytes) -> str:
    """16 hex digits of a keyed BLAKE2b: the same bytes give the same hash on every machine and run."""
    return hashlib.blake2b(payload, digest_size=8, person=b"datasel-id").hexdigest()


def ids_from_hashes(source: str, hashes: Iterable[str]) -> list[str]:
    """``<source>-<hash>``; exact duplicate rows get ``-1``, ``-2``… suffixes in order of appearance."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for h in hashes:
        k = seen[h]
        seen[h] += 1
        out.append(f"{source}-{h}" if k == 0 else f"{source}-{h}-{k}")
    return out


def content_ids(source: str, payloads: Iterable[bytes]) -> list[str]:
    """``<source>-<16 hex>`` per row; exact duplicate rows get ``-1``, ``-2``… suffixes in order of appearance."""
    return ids_from_hashes(source, map(content_hash, payloads))


def _label_bytes(value: str, is_int: bool) -> bytes:
    if not is_int:
        return value.encode()
    v = int(value)
    # 8 signed bytes as ids have always used for integer labels; wider values (uint64) take 16
    return v.to_bytes(8, "little", signed=True) if -(2**63) <= v < 2**63 else v.to_bytes(16, "little", signed=True)


def row_hashes(df: pl.DataFrame, kind: str, labels: Sequence[str], labels_are_int: bool) -> list[str]:
    """One content hash per row: the input (``x`` as float32 bytes, or ``text``) and the user's label value.

    The label enters as the user's value, not its class index, so a row's hash does not change when another
    class appears in the data.
    """
    if kind == "vector":
        xs = np.asarray(df.get_column("x").to_list(), dtype=np.float32).reshape(df.height, -1)
        payloads: Iterable[bytes] = (row.tobytes() + _label_bytes(y, labels_are_int) for row, y in zip(xs, labels))
    else:
        payloads = (f"{t}\x00{y}".encode() for t, y in zip(df.get_column("text").to_list(), labels))
    return [content_hash(p) for p in payloads]


def user_ids(values: pl.Series, source: str, where: str, key: str) -> list[str]:
    """``<source>-<id>`` from a user's id column, refused (naming ``key``) when an id is empty or repeated."""
    ids = values.cast(pl.String)
    if ids.null_count():
        first = int(ids.is_null().arg_true()[0]) + 1
        raise DataError(f"the id column '{values.name}' is empty in {ids.null_count()} row(s) (first: row {first})",
                        file=where, field=key, fix=f"fill every id, or drop {key} to derive ids from the content")
    dup = ids.filter(ids.is_duplicated())
    if dup.len():
        raise DataError(f"{dup.n_unique()} id(s) of column '{values.name}' occur more than once (e.g. "
                        f"{dup.unique().sort().head(3).to_list()})", file=where, field=key,
                        fix=f"make the ids unique, or drop {key} to derive ids from the content")
    return [f"{source}-{i}" for i in ids.to_list()]
