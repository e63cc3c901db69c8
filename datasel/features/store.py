"""The feature store: float16 row-major shards with metadata, a per-row done mask, and a gathered index.

A shard directory holds::

    meta.json      model, checkpoint (name and digest), parameter set, dims, projector seed and digest, dtype, rows,
                   ids hash (+ sha256 when complete)
    ids.parquet    example_id per row
    features.f16   (rows, dim) float16, row-major: np.memmap-compatible
    done.u8        one byte per row, 1 once the row's features are on disk

Writes go through ``os.pwrite`` rather than a writable memmap, so the process's resident memory does not grow with
the shard (mapped pages count as RSS). Features are written (and fdatasync'ed) before their done bytes, so a shard
killed at any point resumes from its last whole chunk and ends with the same bytes as an uninterrupted run.
Readers stream chunks with ``np.fromfile`` at an offset and never load a whole shard unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import DataError
from datasel.store import atomic_path, write_json
from datasel.store.fingerprint import file_sha256

log = logging.getLogger(__name__)

FORMAT = 1
DTYPE = np.float16
# Keys that must agree between a shard and what its reader or resumer expects.
IDENTITY_KEYS = ("format", "model", "checkpoint", "checkpoint_sha", "params", "dim_in", "dim", "projector",
                 "projection", "projection_sha", "seed", "block_rows", "dtype", "unit_norm", "precondition", "loss",
                 "rows", "ids_sha", "split", "chunk_size")
# The bytes the features were computed from (the weights, and the projection when it is fitted to them). A proxy
# retrained under the same name keeps every setting and changes only these: a resume against other bytes would mix
# the features of two models in one shard, so the writer starts the shard over instead of refusing or resuming.
SOURCE_KEYS = ("checkpoint_sha", "projection_sha")


def ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _mismatch(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [k for k in IDENTITY_KEYS if k in want and have.get(k) != want[k]]


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise DataError("not a feature shard (no meta.json)", file=path,
                        fix="rerun the features step that writes this shard") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt meta.json ({exc.msg})", file=path / "meta.json",
                        fix="delete the shard folder and rerun the features step") from None


class ShardWriter:
    """Creates or resumes one shard. ``meta`` must hold the identity keys; ``rows`` and ``ids_sha`` are added."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], ids: Sequence[str] | None, rows: int) -> None:
        self.path = Path(path)
        self.rows, self.dim = int(rows), int(meta["dim"])
        ids_list = [str(i) for i in ids] if ids is not None else None
        if ids_list is not None and len(ids_list) != self.rows:
            raise DataError(f"{len(ids_list)} ids for {self.rows} rows", file=self.path, field="ids")
        self.meta = {"format": FORMAT, "dtype": "float16", **meta, "rows": self.rows,
                     "ids_sha": ids_digest(ids_list) if ids_list is not None else None}
        have = _read_meta(self.path) if (self.path / "meta.json").exists() else None
        bad = _mismatch(have, self.meta) if have is not None else []
        if bad and set(bad) <= set(SOURCE_KEYS):
            log.warning("shard %s was started from other weights (%s); recomputing it from scratch", self.path,
                        ", ".join(f"{k} {have.get(k)} then, {self.meta[k]} now" for k in bad))
            # meta.json first: without it the old rows can never again pass for a resumable shard
            (self.path / "meta.json").unlink()
            have, bad = None, []
        if have is not None:
            if bad:
                raise DataError(
                    "existing shard was written with different settings: "
                    + ", ".join(f"{k}={have.get(k)!r} (now {self.meta[k]!r})" for k in bad),
                    file=self.path, field=bad[0],
                    fix="delete this shard folder to recompute it, or restore the settings it was made with")
            self._check_sizes()
            log.info("resuming shard %s: %d/%d rows done", self.path, int(self.done_mask().sum()), self.rows)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            if ids_list is not None:
                with atomic_path(self.path / "ids.parquet") as tmp:
                    pl.DataFrame({"example_id": ids_list}, schema={"example_id": pl.String}).write_parquet(tmp)
            for name, size in (("features.f16", self.rows * self.dim * 2), ("done.u8", self.rows)):
                with open(self.path / name, "wb") as f:
                    f.truncate(size)  # sparse zeros: a fresh shard has nothing done
            # meta.json last: its presence marks a shard whose files all exist.
            self._write_meta(self.meta)
        self._feat = os.open(self.path / "features.f16", os.O_RDWR)
        self._done = os.open(self.path / "done.u8", os.O_RDWR)

    def _check_sizes(self) -> None:
        for name, size in (("features.f16", self.rows * self.dim * 2), ("done.u8", self.rows)):
            p = self.path / name
            if not p.exists() or p.stat().st_size != size:
                raise DataError(f"{name} has {p.stat().st_size if p.exists() else 'no'} bytes, expected {size}",
                                file=p, fix="delete the shard folder and rerun the features step")

    def _write_meta(self, meta: dict[str, Any]) -> None:
        write_json(self.path / "meta.json", meta, indent=1, sort_keys=True)

    def done_mask(self) -> np.ndarray:
        return np.fromfile(self.path / "done.u8", dtype=np.uint8, count=self.rows).astype(bool)

    def pending(self, chunk_size: int) -> list[tuple[int, int]]:
        """Chunks ``[start, stop)`` on fixed boundaries that still have an undone row.

        Boundaries are fixed multiples of ``chunk_size`` so a resumed run recomputes exactly the chunks the first run
        would have, with the same batch composition and hence the same bytes.
        """
        done = self.done_mask()
        return [(s, min(s + chunk_size, self.rows)) for s in range(0, self.rows, chunk_size)
                if not done[s : s + chunk_size].all()]

    def write(self, start: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=DTYPE)
        if values.ndim != 2 or values.shape[1] != self.dim or start + values.shape[0] > self.rows:
            raise DataError(f"chunk of shape {values.shape} at row {start} does not fit ({self.rows}, {self.dim})",
                            file=self.path)
        if not np.isfinite(values).all():
            raise DataError(f"non-finite features in rows {start}..{start + len(values)}", file=self.path,
                            fix="check the model's loss at this checkpoint (NaN/inf gradients) or disable float16 "
                                "overflow by lowering features.dim scale (unit_norm: true)")
        os.pwrite(self._feat, values.tobytes(), start * self.dim * 2)
        os.fdatasync(self._feat)
        os.pwrite(self._done, b"\x01" * values.shape[0], start)

    def finalize(self) -> dict[str, Any]:
        """Check every row is done, record the checksum and mark the shard complete."""
        os.fdatasync(self._done)
        os.close(self._feat)
        os.close(self._done)
        left = int((~self.done_mask()).sum())
        if left:
            raise DataError(f"{left} rows are not done", file=self.path, fix="rerun the features step")
        meta = {**self.meta, "complete": True, "sha256": file_sha256(self.path / "features.f16")}
        self._write_meta(meta)
        return meta


@dataclass
class FeatureShard:
    """A complete shard, opened for reading; ``expect`` (identity keys) is checked against its metadata."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike, expect: dict[str, Any] | None = None, verify: bool = False) -> FeatureShard:
        path = Path(path)
        meta = _read_meta(path)
        if meta.get("format") != FORMAT or meta.get("dtype") != "float16":
            raise DataError(f"unsupported shard format {meta.get('format')}/{meta.get('dtype')}", file=path,
                            fix="rerun the features step with this version of datasel")
        if not meta.get("complete"):
            raise DataError("shard is incomplete (its writer did not finish)", file=path,
                            fix="rerun the features step; it resumes where it stopped")
        if expect:
            bad = _mismatch(meta, expect)
            if bad:
                raise DataError(
                    "shard does not match what the reader expects: "
                    + ", ".join(f"{k}={meta.get(k)!r} (expected {expect[k]!r})" for k in bad),
                    file=path, field=bad[0],
                    fix="rerun the features step with the current config (or read with the config it was made with)")
        size = (path / "features.f16").stat().st_size if (path / "features.f16").exists() else -1
        want = int(meta["rows"]) * int(meta["dim"]) * 2
        if size != want:
            raise DataError(f"features.f16 has {size} bytes, expected {want} (truncated or foreign file)",
                            file=path / "features.f16", fix="delete the shard folder and rerun the features step")
        if verify and file_sha256(path / "features.f16") != meta.get("sha256"):
            raise DataError("features.f16 fails its checksum (corrupted on disk or edited)", file=path / "features.f16",
                            fix="delete the shard folder and rerun the features step")
        return cls(path, meta)

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def ids(self) -> list[str]:
        p = self.path / "ids.parquet"
        if not p.exists():
            return [str(i) for i in range(self.rows)]
        return pl.read_parquet(p).get_column("example_id").to_list()

    def memmap(self) -> np.memmap:
        """Random access without reading the file (read-only)."""
        return np.memmap(self.path / "features.f16", dtype=DTYPE, mode="r", shape=(self.rows, self.dim))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 (read with a positioned read, not a mapping)."""
        stop = min(stop, self.rows)
        with open(self.path / "features.f16", "rb") as f:
            f.seek(start * self.dim * 2)
            arr = np.fromfile(f, dtype=DTYPE, count=(stop - start) * self.dim)
        return arr.reshape(stop - start, self.dim).astype(np.float32)

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        for s in range(0, self.rows, chunk_rows):
            yield self.read(s, s + chunk_rows)


class FeatureSet:
    """The gathered shards of one feature set (one checkpoint × split), read in shard order."""

    def __init__(self, shards: list[FeatureShard], info: dict[str, Any] | None = None) -> None:
        if not shards:
            raise DataError("a feature set needs at least one shard")
        ref = shards[0].meta
        for sh in shards[1:]:
            bad = [k for k in IDENTITY_KEYS if k not in ("rows", "ids_sha") and sh.meta.get(k) != ref.get(k)]
            if bad:
                raise DataError(f"shard disagrees with {shards[0].path} on {bad}", file=sh.path, field=bad[0],
                                fix="recompute all shards of this feature set with one config")
        self.shards = shards
        self.info = info or {}

    @classmethod
    def open(cls, index: str | os.PathLike, expect: dict[str, Any] | None = None, verify: bool = False) -> FeatureSet:
        """Open a gathered set from its ``index.json`` (written by :func:`gather`)."""
        index = Path(index)
        try:
            info = json.loads(index.read_text())
        except FileNotFoundError:
            raise DataError("feature index does not exist", file=index, fix="run the features gather step") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"corrupt feature index ({exc.msg})", file=index, fix="rerun the gather step") from None
        shards = [FeatureShard.open(index.parent / s["path"], expect, verify) for s in info["shards"]]
        for s, sh in zip(info["shards"], shards):
            if s.get("sha256") != sh.meta.get("sha256"):
                raise DataError("shard changed after it was gathered", file=sh.path,
                                fix="rerun the features gather step")
        return cls(shards, info)

    @property
    def meta(self) -> dict[str, Any]:
        return {**self.shards[0].meta, **{k: v for k, v in self.info.items() if k != "shards"}}

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    def ids(self) -> list[str]:
        return [i for s in self.shards for i in s.ids()]

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        for sh in self.shards:
            yield from sh.iter_chunks(chunk_rows)

    def load(self) -> np.ndarray:
        """All rows as one float32 array (only for sets that fit in memory)."""
        return np.concatenate(list(self.iter_chunks()), axis=0) if self.rows else np.zeros((0, self.dim), np.float32)


# Keys that place features in one vector space: sets compared with each other (train vs target) must agree on them.
# Not ``precondition``: LESS compares Adam-preconditioned pool gradients with plain target gradients on purpose, and
# the preconditioner rescales gradients before the (shared) projection, so both still live in one space.
SPACE_KEYS = ("params", "dim_in", "dim", "projection", "projection_sha", "seed", "projector", "unit_norm")


def check_same_space(a: dict[str, Any], b: dict[str, Any], file: str | os.PathLike) -> None:
    """Refuse to compare features that were projected differently (another projection, its settings, dim, seed)."""
    bad = [k for k in SPACE_KEYS if a.get(k) != b.get(k)]
    if bad:
        raise DataError("features were projected differently: " + ", ".join(
            f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in bad), file=file, field=f"features.{bad[0]}",
            fix="recompute both feature sets with one features config")


def gather(shard_dirs: Sequence[str | os.PathLike], index: str | os.PathLike, verify: bool = True,
           extra: dict[str, Any] | None = None) -> Path:
    """Check the shards (checksums with ``verify``) agree and write ``index.json`` listing them in order."""
    index = Path(index)
    shards = [FeatureShard.open(d, verify=verify) for d in shard_dirs]
    fs = FeatureSet(shards)
    ids = fs.ids()
    if len(set(ids)) != len(ids):
        raise DataError("the shards repeat example ids", file=index.parent, fix="recompute the shards")
    info = {
        **(extra or {}),
        "rows": fs.rows,
        "dim": fs.dim,
        "shards": [{"path": os.path.relpath(sh.path, index.parent), "rows": sh.rows, "sha256": sh.meta["sha256"]}
                   for sh in shards],
    }
    write_json(index, info, indent=1, sort_keys=True)
    return index


def features_for(index: str | os.PathLike, ids: Sequence[str], where: str = "features") -> np.ndarray:
    """Float32 features of ``ids`` (in that order) from a gathered set; refuses ids the set lacks."""
    fs = FeatureSet.open(index)
    have = {i: r for r, i in enumerate(fs.ids())}
    missing = [i for i in ids if i not in have]
    if missing:
        raise DataError(f"{len(missing)} examples have no gradient features (e.g. {missing[:3]})", file=index,
                        field=where, fix="compute features over the same examples table (rerun the features stage)")
    rows = np.fromiter((have[i] for i in ids), dtype=np.int64, count=len(ids))
    return fs.load()[rows]
