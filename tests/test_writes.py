"""Writes are verified before they are renamed into place: a full disk or a file size limit fails with a message that
says so, leaves no temporary or `.wal` and keeps the previous file; an incomplete write is caught by re-reading it;
files the tool creates follow the umask."""

from __future__ import annotations

import errno
import os
import shutil
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
from datasel.store.atomic import disk_error, move_into_place, verify_zip
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


# ------------------------------------------------------------------------------------------- folders, exclusive
def test_folder_write_replaces_the_old_folder_whole_or_not_at_all(tmp_path):
    out = tmp_path / "run" / "model"
    with atomic_path(out, folder=True) as tmp:
        (tmp / "a.json").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"x")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.json", "sub", "sub/b.bin"]
    with pytest.raises(RuntimeError, match="killed"):  # a failure halfway keeps the previous folder as it was
        with atomic_path(out, folder=True) as tmp:
            (tmp / "c.json").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "sub"]
    with atomic_path(out, folder=True) as tmp:  # a new folder replaces the old one: nothing of it is left
        (tmp / "c.json").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.json"] and (out / "c.json").read_text() == "3"
    assert _leftovers(tmp_path) == []


def test_published_work_folder_replaces_the_output(tmp_path):
    from datasel.store import publish_folder

    out, work = tmp_path / "shard_0", tmp_path / ".work" / "shard_0-abc"
    out.mkdir()
    (out / "old.f16").write_bytes(b"old")
    work.mkdir(parents=True)
    (work / "new.f16").write_bytes(b"new")
    with pytest.raises(DataselError, match="refused"):
        publish_folder(work, out, verify=lambda p: (_ for _ in ()).throw(DataselError("refused")))
    assert [p.name for p in out.iterdir()] == ["old.f16"] and work.exists()
    publish_folder(work, out)
    assert [p.name for p in out.iterdir()] == ["new.f16"] and not work.exists()
    assert _leftovers(tmp_path) == []


def test_exclusive_write_never_replaces_a_file(tmp_path):
    from datasel.store import write_text

    target = tmp_path / "config.yaml"
    write_text(target, "a: 1\n", exclusive=True)
    with pytest.raises(FileExistsError):
        write_text(target, "a: 2\n", exclusive=True)
    assert target.read_text() == "a: 1\n" and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- the one writer
# Every write of a pipeline output goes through datasel/store/atomic.py: a file written, renamed, linked or moved
# anywhere else could be seen half-written. The audit below reads datasel/ with `ast` and flags, outside atomic.py:
# os.replace / os.rename / os.link / shutil.move / copy*, a path's .rename(...), and any write (write_text/bytes,
# write_parquet/csv/ndjson/json, savefig, save_pretrained, torch.save, np.save*, open(..., "w"/"a"/"x"/"+")) whose
# target is not the temporary that `with atomic_path(...) as <name>` yields (or a path built from it).
RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("os", "link"), ("shutil", "move"),
           ("shutil", "copy"), ("shutil", "copy2"), ("shutil", "copyfile"), ("shutil", "copytree")}
RECEIVER_WRITES = {"write_text", "write_bytes"}
ARG_WRITES = {"write_parquet", "write_csv", "write_ndjson", "write_json", "write_ipc", "savefig", "save_pretrained",
              "to_csv", "to_parquet"}
FUNC_WRITES = {("torch", "save"): 1, ("np", "save"): 0, ("np", "savez"): 0, ("np", "savez_compressed"): 0,
               ("np", "savetxt"): 0}
# Legitimate exceptions: (file or folder/, finding kind). Anything not listed here fails the test.
ALLOWED = {
    # the writer itself
    ("datasel/store/atomic.py", "*"),
    # `datasel export` has its own folder protocol: a lock, a marker of every file written, the previous export
    # removed by its marker only (never a file of the user's); its files are written into its own temporary folder,
    # which atomic.move_into_place renames into place
    ("datasel/export/formats.py", "write"),
    ("datasel/export/folder.py", "write"),
    # a feature shard's preallocated features.f16 / done.u8 are written in place chunk by chunk (pwrite, then
    # fdatasync) so a killed job resumes; they live in a work folder that atomic.publish_folder moves into place
    ("datasel/features/store.py", "write"),
}


def _names_in(node) -> set[str]:
    import ast

    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _write_findings(path: Path) -> list[tuple[int, str, str]]:
    """(line, kind, source) of every direct write, rename or move in one module that bypasses atomic_path."""
    import ast

    src = path.read_text()
    tree = ast.parse(src)
    atomic_names = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, (ast.With, ast.AsyncWith))
                    for item in node.items
                    if isinstance(item.context_expr, ast.Call) and isinstance(item.optional_vars, ast.Name)
                    and ast.unparse(item.context_expr.func).split(".")[-1] == "atomic_path"}
    dict_names = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and isinstance(node.value, (ast.Dict, ast.DictComp)) for t in node.targets if isinstance(t, ast.Name)}
    found = []

    def write(node, target) -> None:
        if target is not None and not (_names_in(target) & atomic_names):
            found.append((node.lineno, "write", ast.unparse(node)[:90]))

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute):
            base = f.value.id if isinstance(f.value, ast.Name) else None
            if (base, f.attr) in RENAMES:
                found.append((node.lineno, "rename", ast.unparse(node)[:90]))
            elif f.attr == "rename" and node.args and not node.keywords and not (
                    isinstance(node.args[0], (ast.Dict, ast.DictComp))
                    or (isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Name)
                        and node.args[0].func.id == "dict")
                    or (isinstance(node.args[0], ast.Name) and node.args[0].id in dict_names)):
                found.append((node.lineno, "rename", ast.unparse(node)[:90]))  # a path rename (not a frame's)
            elif f.attr in RECEIVER_WRITES:
                write(node, f.value)
            elif f.attr in ARG_WRITES:
                write(node, node.args[0] if node.args else None)  # no argument: returns the text, writes nothing
            elif (base, f.attr) in FUNC_WRITES:
                i = FUNC_WRITES[(base, f.attr)]
                write(node, node.args[i] if len(node.args) > i else None)
            elif f.attr == "open" and node.args and isinstance(node.args[0], ast.Constant) \
                    and any(c in str(node.args[0].value) for c in "wax+"):
                write(node, f.value)
        elif isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                  None)
            if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+"):
                write(node, node.args[0])
    return sorted(found)


def _allowed(rel: str, kind: str) -> bool:
    return any((rel == where or (where.endswith("/") and rel.startswith(where))) and k in ("*", kind)
               for where, k in ALLOWED)


def test_every_write_goes_through_the_atomic_writer():
    bad = []
    for path in sorted((ROOT / "datasel").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{line}: {kind}: {code}" for line, kind, code in _write_findings(path)
                if not _allowed(rel, kind)]
    assert not bad, "writes that bypass datasel/store/atomic.py:\n" + "\n".join(bad)


def test_the_write_audit_catches_direct_writes(tmp_path):
    """The audit flags the patterns it exists for (so an empty result above means something)."""
    mod = tmp_path / "m.py"
    mod.write_text(
        "import os, json, torch, numpy as np\n"
        "from datasel.store import atomic_path\n"
        "def f(df, out, model, frame, renames):\n"
        "    renames = {'a': 'b'}\n"
        "    os.replace(out + '.tmp', out)\n"                      # 5 rename
        "    (out / 'run.json').write_text('{}')\n"                # 6 write
        "    torch.save(model.state_dict(), out)\n"                # 7 write
        "    df.write_parquet(out / 'a.parquet')\n"                # 8 write
        "    np.savez_compressed(out / 'mask.npz', a=1)\n"         # 9 write
        "    with open(out / 'm.json', 'w') as fh:\n"             # 10 write
        "        json.dump({}, fh)\n"
        "    out.rename(out.parent / 'x')\n"                       # 12 rename
        "    frame = frame.rename(renames)\n"                      # a frame's columns: not a finding
        "    frame = frame.rename(dict(zip(a, b)))\n"              # nor here
        "    text = df.write_csv()\n"                              # returns the text: not a finding
        "    with atomic_path(out) as tmp:\n"
        "        df.write_parquet(tmp)\n"
        "        (tmp / 'x.json').write_text('{}')\n"
        "        model.save_pretrained(tmp)\n")
    assert [(line, kind) for line, kind, _ in _write_findings(mod)] == [
        (5, "rename"), (6, "write"), (7, "write"), (8, "write"), (9, "write"), (10, "write"), (12, "rename")]


def test_move_into_place_replaces_a_folder_whole_and_restores_it_when_the_move_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = tmp_path / ".tmp-new"
    new.mkdir()
    (new / "new.txt").write_text("new")
    discarded = []

    def discard(old):
        discarded.append(sorted(p.name for p in old.iterdir()))
        shutil.rmtree(old)

    move_into_place(new, out, discard=discard)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and discarded == [["old.txt"]]
    # the new folder cannot be moved in: the folder that stepped aside comes back, nothing is discarded
    with pytest.raises(FileNotFoundError):
        move_into_place(tmp_path / ".tmp-missing", out, replace_folder=True, discard=discard)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and len(discarded) == 1
    # a folder the caller did not choose to replace is left alone: os.replace refuses a non-empty one
    other = tmp_path / ".tmp-other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(OSError):
        move_into_place(other, out, replace_folder=False)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other", "out"]
