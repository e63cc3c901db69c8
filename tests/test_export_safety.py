"""Export safety: --overwrite replaces only an earlier export, names are never paths, one writer per folder,
disk full is named and loses nothing, written files are checked before they count, modes follow the umask."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, write_results
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasel.cli import main
from datasel.errors import DataselError
from datasel.export import export_selection, formats
from datasel.export.folder import MARKER, export_lock
from datasel.selection.make import make_selection
from datasel.store import write_table

SEL = "m_top_keep40"


@pytest.fixture()
def project(tmp_path, tiny_examples, monkeypatch):
    """A project folder (.git, Snakefile, results/ with one selection), the current folder for the test."""
    df, meta = tiny_examples
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (proj / "Snakefile").write_text("# the user's workflow\n")
    res, scores = write_results(proj, df, meta, "max", "m")
    sel = make_selection(df, scores, "m_top", {"policy": "top", "score": "m"}, 0.4, 0)
    write_table(sel, res / "selections" / f"{SEL}.parquet", "selections")
    monkeypatch.chdir(proj)
    return proj, res, int(sel.get_column("selected").sum())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (links by their target)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


@pytest.mark.parametrize("target", ["results", "results/selections", "results/examples", "results/new_export",
                                    ".", "..", "../.."])
def test_overwrite_never_touches_results_the_project_or_above(project, tmp_path, target):
    proj, res, _ = project
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match="refusing to export"):
        export_selection(res, SEL, "parquet", proj / target, overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("sign", [".git", "Snakefile", "results"])
def test_a_folder_that_looks_like_a_project_is_refused(project, tmp_path, sign):
    _, res, _ = project
    other = tmp_path / "other_project"
    (other / sign).mkdir(parents=True) if sign != "Snakefile" else (other.mkdir(), (other / sign).write_text("x"))
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match=f"holds {sign}"):
        export_selection(res, SEL, "parquet", other, overwrite=True)
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_folder_with_foreign_files_and_keeps_them(project, tmp_path):
    _, res, _ = project
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    with pytest.raises(DataselError, match="did not write"):
        export_selection(res, SEL, "parquet", plain, overwrite=True)
    assert (plain / "keep.txt").read_text() == "mine"

    out = tmp_path / "subset"
    export_selection(res, SEL, "parquet", out)
    (out / "README.txt").write_text("my notes about this subset")
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match=r"files the export did not write \(README.txt\)"):
        export_selection(res, SEL, "jsonl", out, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_marker_naming_paths_outside_is_not_trusted(project, tmp_path):
    _, res, _ = project
    out = tmp_path / "subset"
    export_selection(res, SEL, "parquet", out)
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "files": marker["files"] + ["../victim.txt"]}))
    with pytest.raises(DataselError, match="did not write"):
        export_selection(res, SEL, "parquet", out, overwrite=True)
    assert victim.read_text() == "not yours"


def test_overwrite_replaces_an_earlier_export_and_only_it(project, tmp_path):
    _, res, n = project
    out = tmp_path / "subset"
    export_selection(res, SEL, "parquet", out)
    with pytest.raises(DataselError, match="not empty"):
        export_selection(res, SEL, "jsonl", out)
    export_selection(res, SEL, "jsonl", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, f"{SEL}.jsonl"]
    assert pl.read_ndjson(out / f"{SEL}.jsonl").height == n
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == [f"{SEL}.jsonl"] and marker["rows"] == n and marker["format"] == "jsonl"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder or lock left


def test_overwrite_refuses_an_export_the_user_edited_and_leaves_it_untouched(project, tmp_path):
    _, res, n = project
    out = tmp_path / "subset"
    export_selection(res, SEL, "jsonl", out)
    marker = json.loads((out / MARKER).read_text())
    data = out / f"{SEL}.jsonl"
    assert marker["digests"][data.name]["size"] == data.stat().st_size
    assert len(marker["digests"][data.name]["sha256"]) == 64
    export_selection(res, SEL, "jsonl", out, overwrite=True)  # unedited: replaced
    text = data.read_text()
    data.write_text(text.replace("\n", "\r\n", 1))  # an editor saving with Windows line ends
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match="edited after") as err:
        export_selection(res, SEL, "jsonl", out, overwrite=True)
    assert data.name in str(err.value) and "move" in str(err.value)
    assert snapshot(tmp_path) == before
    # a same-size edit is caught by the digest, not only the size
    data.write_text(text[:-2] + ("0" if text[-2] != "0" else "1") + text[-1])
    with pytest.raises(DataselError, match="edited after"):
        export_selection(res, SEL, "jsonl", out, overwrite=True)


def test_a_marker_without_digests_is_replaced_as_before(project, tmp_path):
    # exports written before digests were recorded: there is nothing to compare, so --overwrite behaves as it did
    _, res, n = project
    out = tmp_path / "subset"
    export_selection(res, SEL, "jsonl", out)
    marker = json.loads((out / MARKER).read_text())
    del marker["digests"]
    (out / MARKER).write_text(json.dumps(marker))
    (out / f"{SEL}.jsonl").write_text("edited\n")
    export_selection(res, SEL, "jsonl", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, f"{SEL}.jsonl"]
    assert pl.read_ndjson(out / f"{SEL}.jsonl").height == n


def test_a_file_in_the_way_is_never_replaced(project, tmp_path):
    _, res, _ = project
    out = tmp_path / "taken"
    out.write_text("someone's notes")
    for overwrite in (False, True):
        with pytest.raises(DataselError, match="file is in the way"):
            export_selection(res, SEL, "parquet", out, overwrite=overwrite)
    assert out.read_text() == "someone's notes"


@pytest.mark.parametrize("points_at", ["empty", "results", "export"])
def test_a_symlinked_out_is_refused(project, tmp_path, points_at):
    _, res, _ = project
    target = {"empty": tmp_path / "empty", "results": res, "export": tmp_path / "real"}[points_at]
    if points_at == "empty":
        target.mkdir()
    if points_at == "export":
        export_selection(res, SEL, "parquet", target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match="symbolic link"):
        export_selection(res, SEL, "parquet", link, overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", [f"../selections/{SEL}", f"{SEL}/../{SEL}", "../../evil", "/tmp/evil", "..",
                                  ".hidden", f"{SEL}.parquet", "", "a\\b", f"selections/{SEL}"])
def test_selection_names_are_names_not_paths(project, tmp_path, name):
    _, res, _ = project
    # a valid selection table outside the selections folder, which a path-like name would reach
    df = pl.read_parquet(res / "selections" / f"{SEL}.parquet")
    df.write_parquet(tmp_path / "evil.parquet")
    df.write_parquet(res / "evil.parquet")
    before = snapshot(tmp_path)
    with pytest.raises(DataselError, match="not a selection name|unknown selection"):
        export_selection(res, name, "parquet", tmp_path / "out")
    assert snapshot(tmp_path) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=st.sampled_from("abk_./\\-0149 \x00"), max_size=24))
def test_any_name_outside_the_listing_is_refused_without_writing(project, tmp_path, name):
    _, res, _ = project
    out = tmp_path / "hyp_out"
    before = snapshot(tmp_path)
    if name == SEL:
        return
    with pytest.raises(DataselError) as err:
        export_selection(res, name, "parquet", out)
    assert err.value.field == "SELECTION" and SEL in (err.value.fix or "")
    assert snapshot(tmp_path) == before


def test_a_held_lock_refuses_a_second_export(project, tmp_path):
    _, res, _ = project
    out = tmp_path / "subset"
    with export_lock(out.resolve()):
        with pytest.raises(DataselError, match="another `datasel export` is writing"):
            export_selection(res, SEL, "parquet", out)
    assert not out.exists()
    export_selection(res, SEL, "parquet", out)  # released: the next one works
    assert (out / f"{SEL}.parquet").exists()


def _cli(res: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "datasel.cli", "export", SEL, "--results", str(res), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "DATASEL_PROGRESS": "0"}


def test_two_concurrent_exports_into_one_folder_one_wins_one_fails_clearly(project, tmp_path):
    _, res, n = project
    out = tmp_path / "subset"
    procs = [subprocess.Popen(_cli(res, "--format", fmt, "--out", str(out)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for fmt in ("parquet", "jsonl")]
    done = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in done)
    assert codes == [0, 1], done
    err = next(e for code, e in done if code == 1)
    assert "datasel: error" in err and "Traceback" not in err
    assert "another `datasel export`" in err or "not empty" in err or "created this folder meanwhile" in err
    marker = json.loads((out / MARKER).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *marker["files"]])
    assert marker["rows"] == n and len(marker["files"]) == 1


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("earlier", [False, True])
def test_disk_full_is_named_and_loses_nothing(project, tmp_path, earlier):
    _, res, _ = project
    out = tmp_path / "subset"
    if earlier:
        export_selection(res, SEL, "jsonl", out)
    before = snapshot(tmp_path)
    args = ["--format", "parquet", "--out", str(out)] + (["--overwrite"] if earlier else [])
    proc = subprocess.run(_cli(res, *args), capture_output=True, text=True, env=_env(), timeout=120,
                          preexec_fn=_limit_file_size)
    assert proc.returncode == 1, proc.stderr
    assert "disk full" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("datasel: error") == 1
    assert snapshot(tmp_path) == before  # no half-written folder, the earlier export as it was, no lock left


def test_a_write_that_reads_back_wrong_is_never_renamed_into_place(project, tmp_path, monkeypatch):
    _, res, _ = project
    monkeypatch.setattr(formats, "read_back", lambda fmt, folder, stem: (3, []))
    with pytest.raises(DataselError, match="has 3 rows"):
        export_selection(res, SEL, "parquet", tmp_path / "subset")
    assert not (tmp_path / "subset").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_meta_json_is_a_clear_error(project, tmp_path, capsys):
    _, res, _ = project
    (res / "examples" / "meta.json").unlink()
    assert main(["export", SEL, "--out", str(tmp_path / "subset"), "--results", str(res)]) == 1
    err = capsys.readouterr().err
    assert "meta.json is missing" in err and "prepare" in err and "Traceback" not in err
    assert not (tmp_path / "subset").exists()


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_modes_follow_the_umask(project, tmp_path, mask, fmt):
    _, res, _ = project
    old = os.umask(mask)
    try:
        out = export_selection(res, SEL, fmt, tmp_path / "subset")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~mask}


def test_an_unwritable_place_is_a_clear_error(project, tmp_path, monkeypatch):
    _, res, _ = project
    import datasel.export as export

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(export.tempfile, "mkdtemp", denied)
    with pytest.raises(DataselError, match=r"cannot write the export \(Permission denied\)"):
        export_selection(res, SEL, "parquet", tmp_path / "subset")
    assert not (tmp_path / "subset").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
