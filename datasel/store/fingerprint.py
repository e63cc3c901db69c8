"""Content fingerprints of a run's input files, so Snakemake reruns a step when the bytes change, not the mtime.

Snakemake decides on modification times (it compares checksums only for files under 1 MB, never for folders), so
a ``touch``, a ``git checkout`` or a copy of the same file reran data preparation and everything after it, while
an edit that kept an older mtime (``cp -p``, ``rsync -t``) was missed. The prepare rule therefore marks its data
inputs ``ancient`` (their times are ignored) and passes :func:`data_fingerprint` as a param: Snakemake's params
trigger reruns the job when the fingerprint differs from the one recorded with its outputs.

Hashing a multi-GB dataset at every parse would cost seconds each time, so each file's digest is cached keyed by
its (path, size, mtime_ns, ctime_ns): a file whose stat is unchanged is not read again. ctime is part of the key
because tools that restore an old mtime cannot restore it, so an edit is always rehashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasel.store.atomic import atomic_path

# where the digests are cached, relative to the working directory (the run folder); Snakemake's own state folder,
# so `rm -rf .snakemake` forgets both together
DIGEST_CACHE = Path(".snakemake", "datasel", "file-digests.json")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes (read in blocks: any size)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file: what a marker keeps to tell later whether the file is still the one written."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}


def matches_record(path: str | os.PathLike, record: Any) -> bool:
    """Whether ``path`` is, byte for byte, the file ``record`` (from :func:`file_record`) describes; the size is
    compared first, so a file that plainly differs is not hashed."""
    try:
        return (isinstance(record, dict) and record.get("size") == os.stat(path).st_size
                and record.get("sha256") == file_sha256(path))
    except OSError:
        return False


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class DigestCache:
    """File digests remembered by (resolved path, size, mtime_ns, ctime_ns) in a JSON file."""

    def __init__(self, file: str | os.PathLike = DIGEST_CACHE) -> None:
        self.file = Path(file)
        self._entries: dict[str, dict[str, object]] = {}
        self._dirty = False
        try:
            loaded = json.loads(self.file.read_text())
            if isinstance(loaded, dict):
                self._entries = loaded
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: digests are recomputed and the file rewritten

    def digest(self, path: str | os.PathLike) -> str:
        p = Path(path).resolve()
        key, stat = str(p), _stat_key(p)
        entry = self._entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        sha = file_sha256(p)
        if _stat_key(p) != stat:  # written while we read it: do not remember a digest of bytes in flux
            return sha
        self._entries[key] = {"stat": stat, "sha256": sha}
        self._dirty = True
        return sha

    def save(self) -> None:
        """Write the cache if it learned something; a read-only run folder only loses the speed-up."""
        if not self._dirty:
            return
        try:
            with atomic_path(self.file) as tmp:
                tmp.write_text(json.dumps(self._entries, sort_keys=True))
            self._dirty = False
        except OSError:
            pass


def data_fingerprint(paths: Iterable[str | os.PathLike], cache: DigestCache | None = None) -> str:
    """One SHA-256 over the files' names (as given) and contents: changes when any byte, name or the set changes.

    The names are part of it so renaming a file inside a dataset folder (which changes what prepare reads, e.g.
    split names) counts as a change; their order does not, since ``paths`` is sorted first.
    """
    own = cache is None
    cache = cache or DigestCache()
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        h.update(p.encode())
        h.update(b"\0")
        h.update(cache.digest(p).encode())
        h.update(b"\n")
    if own:
        cache.save()
    return h.hexdigest()
