"""Writes are verified before they are renamed into place: a full disk or a file size limit fails with a message that
says so, leaves no temporary or `.wal` and keeps the previous file; an incomplete write is caught by re-reading it;
files the tool creates follow the umask."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from conftest import ROOT
from datasel.errors import DataselError
from datasel.store import atomic_path, read_table, save_checkpoint_file, write_table
from datasel.store.atomic import disk_error, verify_zip
from datasel.store.catalog import build_catalog, query
from datasel.store.tables import verify_parquet


def _scores(n: int) -> pl.DataFrame:
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(n)], "method": ["m"] * n,
                         "score": [float(i) for i in range(n)], "rank": list(range(1, n + 1))})


# The child sets a file size limit (RLIMIT_FSIZE) after any set-up writes, ignoring SIGXFSZ so that a write past the
# limit fails with EFBIG, as a write to a full disk fails with ENOSPC, instead of killing the process.
_CHILD = r"""
import resource, signal, sys
from pathlib import Path
import polars as pl
from datasel.errors import DataselError
from datasel.store import save_checkpoint_file, write_table
from datasel.store.catalog import build_catalog
what, out, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
n = 20000
df = pl.DataFrame({"example_id": [f"e{i}" for i in range(n)], "method": ["m"] * n,
                   "score": [float(i) for i in range(n)], "rank": list(range(1, n + 1))})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    if what == "table":
        write_table(df, out / "scores" / "a.parquet", "scores")
    elif what == "catalog":
        build_catalog(out, out / "catalog.duckdb")
    else:
        import torch
        save_checkpoint_file({"w": torch.arange(100000, dtype=torch.float32)}, out / "proxy.pt")
except DataselError as exc:
    print(exc)
    sys.exit(3)
print("written")
"""


def _limited(what: str, out: Path, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _CHILD, what, str(out), str(limit)], capture_output=True, text=True,
                          env=env, timeout=120)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".wal")]


def test_write_table_past_the_file_size_limit_fails_clearly_and_keeps_the_old_table(tmp_path):
    old = tmp_path / "scores" / "a.parquet"
    write_table(_scores(5), old, "scores")
    proc = _limited("table", tmp_path, 20_000)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "file size limit" in proc.stdout and str(old) in proc.stdout and "Traceback" not in proc.stderr
    assert read_table(old, "scores").height == 5  # the previous table is untouched
    assert _leftovers(tmp_path) == []


def test_build_catalog_past_the_file_size_limit_fails_and_keeps_the_old_catalog(tmp_path):
    write_table(_scores(20000), tmp_path / "scores" / "a.parquet", "scores")
    build_catalog(tmp_path, tmp_path / "catalog.duckdb")
    write_table(_scores(7), tmp_path / "scores" / "b.parquet", "scores")
    for limit in (4096, 200_000):  # while the file is created / at the checkpoint that moves the views into it
        proc = _limited("catalog", tmp_path, limit)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "file size limit" in proc.stdout and "catalog.duckdb" in proc.stdout
        assert _leftovers(tmp_path) == []
    # the old catalog is whole: its view lists files by glob, so it also sees b.parquet
    assert query(tmp_path / "catalog.duckdb", "select count(*) from scores") == [(20007,)]
    assert _limited("catalog", tmp_path, 50_000_000).returncode == 0  # the same build under a roomy limit


def test_checkpoint_past_the_file_size_limit_fails_clearly(tmp_path):
    proc = _limited("ckpt", tmp_path, 100_000)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "file size limit" in proc.stdout and "proxy.pt" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_named_disk_full(tmp_path):
    assert disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == "disk full"
    assert disk_error(RuntimeError("IO error: No space left on device (os error 28)")) == "disk full"
    assert disk_error(OSError(errno.EFBIG, os.strerror(errno.EFBIG))) == "file size limit"
    assert disk_error(RuntimeError("some other failure")) is None
    target = tmp_path / "t.json"
    with pytest.raises(DataselError, match="disk full") as err:
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert err.value.file == target and "free disk space" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_write_is_caught_before_the_rename(tmp_path):
    target = tmp_path / "s.parquet"
    write_table(_scores(3), target, "scores")
    full = tmp_path / "full.parquet"
    _scores(300).write_parquet(full)
    with pytest.raises(DataselError, match="did not complete") as err:
        with atomic_path(target, verify=lambda p: verify_parquet(p, 300)) as tmp:
            tmp.write_bytes(full.read_bytes()[:-100])  # a write that stopped short of the footer
    assert err.value.file == target
    with pytest.raises(DataselError, match="300 were written"):
        with atomic_path(target, verify=lambda p: verify_parquet(p, 300)) as tmp:
            _scores(299).write_parquet(tmp)  # whole file, wrong row count
    ckpt = tmp_path / "c.pt"
    torch.save({"w": torch.zeros(1000)}, ckpt)
    with pytest.raises(DataselError, match="did not complete"):
        with atomic_path(tmp_path / "d.pt", verify=verify_zip) as tmp:
            tmp.write_bytes(ckpt.read_bytes()[:-50])
    assert read_table(target, "scores").height == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "full.parquet", "s.parquet"]


def test_catalog_build_removes_an_orphan_wal_of_the_replaced_catalog(tmp_path):
    write_table(_scores(4), tmp_path / "scores" / "a.parquet", "scores")
    (tmp_path / "catalog.duckdb.wal").write_bytes(b"left by a crashed build")
    build_catalog(tmp_path, tmp_path / "catalog.duckdb")
    assert not (tmp_path / "catalog.duckdb.wal").exists()
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    assert con.execute("select view_name, rows_at_build from datasel_catalog").fetchall() == [("scores", 4)]
    con.close()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_created_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_table(_scores(3), tmp_path / "results" / "scores" / "a.parquet", "scores")
        save_checkpoint_file({"w": torch.zeros(3)}, tmp_path / "results" / "proxy" / "c.pt")
        with atomic_path(tmp_path / "results" / "meta.json") as tmp:
            tmp.write_text("{}")
        build_catalog(tmp_path / "results", tmp_path / "results" / "catalog.duckdb")
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    for p in [tmp_path / "results", *(tmp_path / "results").rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (want_dir if p.is_dir() else want_file), (p, oct(mode))
