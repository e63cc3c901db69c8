"""Where an export may be written, and what ``--overwrite`` may replace.

An export folder carries a marker (``.datasel-export.json``) listing every file the export wrote, with its size and
SHA-256. ``--overwrite`` replaces a folder only when it holds exactly those files, unedited: a file changed since,
a folder with anything else in it, a file in the way, a
symlink, the results folder (or any folder above or inside it), the current project and any folder that looks like
a project (``.git``, ``Snakefile``, ``results/``) are refused. One export at a time per folder: a lock file next
to the folder, held with ``fcntl.flock`` (released by the kernel if the process dies, so a crash leaves no stale
lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasel.errors import DataselError
from datasel.store.fingerprint import file_record, matches_record

log = logging.getLogger(__name__)

MARKER = ".datasel-export.json"
PROJECT_SIGNS = (".git", "Snakefile", "results")


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def refuse_protected(out: Path, results: Path) -> None:
    """Refuse an ``--out`` that is a symlink, the results folder or near it, or a project folder."""
    if out.is_symlink():
        raise DataselError("the output folder is a symbolic link", file=out, field="--out",
                           fix="give the real folder (or a new one); an export never writes through a link")
    real, res, cwd = out.resolve(), results.resolve(), Path.cwd().resolve()
    why = None
    if _within(real, res) or _within(res, real):
        why = f"it is the results folder {res}, inside it or above it"
    elif _within(cwd, real):
        why = "it is the current folder or a folder above it"
    elif real == Path(real.anchor) or real == _home():
        why = "it is the home folder or the filesystem root"
    elif real.is_dir() and any((real / sign).exists() for sign in PROJECT_SIGNS):
        why = f"it holds {', '.join(s for s in PROJECT_SIGNS if (real / s).exists())} (a project, not an export)"
    if why:
        raise DataselError(f"refusing to export into {real}: {why}", file=out, field="--out",
                           fix="choose a new folder for the export, e.g. --out subset/")


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known (HOME unset, no passwd entry)
        return None


def _entries(folder: Path) -> set[str]:
    """Every file, link and empty folder under ``folder`` (relative paths; links are not followed)."""
    found = set()
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found.update(str(rel / f) for f in files)
        found.update(str(rel / d) for d in dirs if (Path(root) / d).is_symlink())
        if not dirs and not files and rel != Path("."):
            found.add(str(rel))
    return found


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) and _plain(f) for f in files):
        return None
    return marker


def _plain(rel: str) -> bool:
    """A relative path inside the folder (no absolute path, no ``..``)."""
    p = Path(rel)
    return not p.is_absolute() and ".." not in p.parts and rel not in ("", ".")


def check_replaceable(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` exists (as an empty folder or an earlier export); refuse anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataselError("a file is in the way of the output folder", file=out, field="--out",
                           fix="choose a new folder; an export never replaces a file it did not write")
    entries = _entries(out)
    if not entries:
        return True
    marker = read_marker(out)
    if not overwrite:
        hint = "pass --overwrite to replace this earlier export" if marker else "choose a new or empty folder"
        raise DataselError("the output folder exists and is not empty", file=out, field="--out", fix=hint)
    if marker is None:
        raise DataselError("refusing to overwrite a folder that `datasel export` did not write (no valid "
                           f"{MARKER} marker)", file=out, field="--overwrite",
                           fix="choose a new folder, or empty this one yourself")
    foreign = sorted(entries - set(marker["files"]) - {MARKER})
    if foreign:
        raise DataselError(f"refusing to overwrite: the folder holds files the export did not write "
                           f"({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''})", file=out,
                           field="--overwrite", fix="move those files out, or choose a new folder")
    _refuse_edited(out, marker)
    return True


def _refuse_edited(out: Path, marker: dict[str, Any]) -> None:
    """Refuse when a file the export wrote was changed since: the edit is the user's work, not datasel's.

    A marker from before digests were recorded has none to compare: such an export is replaced as before. A listed
    file that is gone holds nothing to lose.
    """
    digests = marker.get("digests")
    if not isinstance(digests, dict):
        return
    for rel in marker["files"]:
        path, want = out / rel, digests.get(rel)
        if not isinstance(want, dict) or not path.is_file() or path.is_symlink():
            continue
        if not matches_record(path, want):
            raise DataselError("refusing to overwrite: this file of the earlier export was edited after "
                               "`datasel export` wrote it", file=path, field="--overwrite",
                               fix="move the file (or the folder) away to keep your edit, or delete it yourself, "
                                   "then rerun the export")


def write_marker(folder: Path, info: dict[str, Any]) -> None:
    """The marker: every entry the export wrote, and each file's size and SHA-256 (so ``--overwrite`` can tell an
    untouched export from one the user edited)."""
    files = sorted(_entries(folder))
    digests = {rel: file_record(folder / rel) for rel in files
               if (folder / rel).is_file() and not (folder / rel).is_symlink()}
    with open(folder / MARKER, "w") as f:
        json.dump({"written_by": "datasel export", **info, "files": files, "digests": digests}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def remove_export(folder: Path) -> None:
    """Delete an earlier export: only the files its marker lists, then the folders they leave empty."""
    marker = read_marker(folder)
    files = (marker or {}).get("files", [])
    for rel in [*files, MARKER]:
        with contextlib.suppress(OSError):  # gone already, or no longer a file: then it stays
            (folder / rel).unlink()
    for root, _dirs, _files in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(root)  # fails on a folder that still holds something: then it stays
    if folder.exists():
        log.warning("the previous export %s held files that appeared after it was checked; kept it", folder)


@contextlib.contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """Hold the lock of one output folder; a second export into it fails at once with a clear error."""
    lock = out.parent / f".{out.name}.datasel-lock"
    for _attempt in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataselError("another `datasel export` is writing this folder right now", file=out,
                                   field="--out", fix="wait for it to finish, or export into another folder") from None
            raise
        # the holder before us may have removed the lock file after we opened it: then our lock guards nothing
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise DataselError("could not take the export lock", file=lock, fix="retry the export")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
