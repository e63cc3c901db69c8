"""Verified atomic writes: a temporary sibling, checked complete and fsynced, then renamed into place.

Every file and folder the tool writes goes through this module (:func:`atomic_path` and the helpers on it:
:func:`write_text`, :func:`write_json`, :func:`save_checkpoint_file`, :func:`publish_folder`), so a reader never sees
a half-written file and a write that failed never looks complete:

- the caller writes to a temporary sibling (``.tmp-<name>.<random>``, a name no reader globs for): a file or, with
  ``folder=True``, a folder (a ``save_pretrained`` output, a run folder);
- an optional ``verify`` callback re-opens the temporary and checks it is whole (a Parquet footer and row count, a
  checkpoint's zip directory and CRCs, a catalog's views) before anything is renamed;
- the file (every file of a folder) is fsynced before the rename and the parent after it, so a crash cannot leave a
  renamed empty file; a folder replaces an earlier one whole (the old one is moved aside, then removed);
- a full disk (ENOSPC, EDQUOT) or a file size limit (EFBIG, ``ulimit -f``) fails the job with a
  :class:`~datasel.errors.DataselError` that says so, and the temporary is removed;
- the file gets the mode a plain ``open()`` would give (``0o666 & ~umask``): ``mkstemp`` creates it 0600;
- ``exclusive=True`` links the file into place instead, failing with ``FileExistsError`` if the name exists (a file
  the user owns, such as a run folder's config, is never replaced).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datasel.errors import DataselError

_DISK_FULL = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full (quota exceeded)", errno.EFBIG: "file size limit"}


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` alone must set one to read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open()``/``mkdir()`` would: 0o666 (file) or 0o777 (folder) minus the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask; a file renamed into place from one would
    keep that. Only ``path`` itself changes: what a caller created inside a folder already followed the umask.
    """
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


def disk_error(exc: BaseException) -> str | None:
    """"disk full" / "file size limit" when ``exc`` is such a failure (also when a library only kept the message)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return _DISK_FULL[e.errno]
    # polars, DuckDB and torch re-raise OS errors as their own types; only the strerror text survives
    text = str(exc)
    for code, what in _DISK_FULL.items():
        if os.strerror(code) in text or f"os error {code})" in text:
            return what
    return None


def raise_disk_error(exc: BaseException, path: str | os.PathLike) -> None:
    """Re-raise a disk-full / size-limit failure as a clear DataselError naming the file; other errors unchanged."""
    what = disk_error(exc)
    if what is None:
        return
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    raise DataselError(
        f"{what}: writing this file failed ({first}); nothing was renamed into place",
        file=path,
        fix="free disk space (or raise the file size limit, `ulimit -f`) and rerun the step"
        if what != "file size limit"
        else "raise the file size limit (`ulimit -f`, the job's limits) or free space, and rerun the step",
    ) from exc


def fsync_path(path: str | os.PathLike) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; best effort where the OS refuses a folder fsync."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if disk_error(exc):  # a delayed write error (NFS, quotas) surfaces here: it is the write's failure
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under ``folder`` to disk, so a completed rename is a completed write."""
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            if not os.path.islink(os.path.join(root, name)):
                fsync_path(Path(root, name))
    fsync_path(Path(folder))


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def move_into_place(tmp: Path, path: Path, *, replace_folder: bool | None = None,
                    discard: Callable[[Path], Any] = _remove_tree) -> None:
    """Rename the finished ``tmp`` onto ``path``; a folder replaces a folder whole.

    ``os.replace`` cannot replace a non-empty folder: the folder at ``path`` steps aside under a temporary name
    first, so ``path`` is always one whole folder; it comes back if ``tmp`` cannot be moved in, else ``discard``
    removes it (by default the whole tree). ``replace_folder`` is whether a folder at ``path`` is to be replaced: by
    default, whether one is there; a caller that checked ``path`` under its own lock passes what it found.
    """
    if replace_folder is None:
        replace_folder = tmp.is_dir() and path.is_dir() and not path.is_symlink()
    old = None
    if replace_folder:
        old = path.parent / f".tmp-old-{tmp.name}"
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
            old = None
        raise
    finally:
        if old is not None:
            discard(old)


def _place(tmp: Path, path: Path, exclusive: bool) -> None:
    """Rename (or, ``exclusive``, link) the finished temporary onto ``path``."""
    if exclusive:
        os.link(tmp, path)  # FileExistsError when the name is taken: nothing is replaced
        return
    move_into_place(tmp, path)


def publish_folder(src: str | os.PathLike, path: str | os.PathLike,
                   verify: Callable[[Path], Any] | None = None) -> Path:
    """Move a finished folder ``src`` (on the same file system: a resumable work folder that must outlive a failed
    job) onto ``path``: its files flushed, ``verify`` passed, an earlier folder at ``path`` replaced whole."""
    src, path = Path(src), Path(path)
    try:
        fsync_tree(src)
        if verify is not None:
            verify(src)
    except Exception as exc:
        raise_disk_error(exc, path)
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    _place(src, path, exclusive=False)
    with contextlib.suppress(OSError):
        fsync_path(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, verify: Callable[[Path], Any] | None = None, *, folder: bool = False,
                exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block finishes and ``verify`` passes.

    The temporary is an empty file, or with ``folder=True`` an empty folder (its mode from the umask) to write files
    into; the final ``os.replace`` is atomic because both names sit in one folder. ``verify(tmp)`` should re-open the
    written data and raise if it is incomplete. On any failure the temporary is removed and nothing at ``path``
    changes. ``exclusive`` (files) links instead of renaming and raises ``FileExistsError`` if ``path`` exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp_path = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
        follow_umask(tmp_path)  # mkdtemp makes 0700
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if not tmp_path.exists():
                raise DataselError("the write produced no file", file=path,
                                   fix="rerun the step; report a bug if it repeats")
            if tmp_path.is_dir():
                fsync_tree(tmp_path)
            else:
                fsync_path(tmp_path)
            if verify is not None:
                verify(tmp_path)
            follow_umask(tmp_path)
        except DataselError as exc:
            if exc.file is not None and Path(exc.file) == tmp_path:
                exc.file = path  # name the file the user knows, not the temporary
            raise
        except Exception as exc:
            raise_disk_error(exc, path)
            raise
        _place(tmp_path, path, exclusive)
        with contextlib.suppress(OSError):
            fsync_path(path.parent)
    finally:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists() or tmp_path.is_symlink():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str, *, exclusive: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``exclusive``: fail with FileExistsError if it exists."""
    with atomic_path(path, exclusive=exclusive) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """``json.dumps(obj)`` written to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def incomplete(path: str | os.PathLike, problem: str) -> DataselError:
    """The error a ``verify`` callback raises for a write that did not come out whole."""
    return DataselError(f"the write did not complete: {problem}; nothing was renamed into place", file=path,
                        fix="check free disk space and rerun the step")


def verify_zip(path: Path) -> None:
    """A ``torch.save`` file is a zip archive: its central directory and every member's CRC must check out."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise incomplete(path, f"not a whole checkpoint archive ({exc})") from exc
    if bad is not None:
        raise incomplete(path, f"member '{bad}' fails its CRC check")


def save_checkpoint_file(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, verified complete (zip directory and CRCs) before the rename."""
    import torch

    with atomic_path(path, verify=verify_zip) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
    return Path(path)
