"""Run folders: `datasel init DIR` writes a complete config, the repository's workflow runs there without copying
config/ into it, and an edited data file reruns prepare (by content: a touched file does not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT

from datasel.config import check_config, load_config
from datasel.errors import DataselError
from datasel.runfolder import init_folder, templates


def _user_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4))
    frame = pl.DataFrame({"row_id": np.arange(rows) + 1000, **{f"f{i}": x[:, i] for i in range(4)},
                          "target": (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64), "note": ["n"] * rows})
    frame.write_csv(path)
    return path


def _datasel(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasel.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DATASEL_PROGRESS": "0"})


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    _user_csv(tmp_path / "my.csv", 150)
    proc = _datasel(tmp_path, "init", "run1", "--data", "my.csv", "--label", "target", "--id", "row_id")
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "run1"


def test_init_writes_a_complete_config_for_the_users_table(run_dir) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "extends" not in cfg and "noise" not in cfg["data"]  # complete, and the user's labels are left alone
    assert cfg["data"]["label_column"] == "target" and cfg["data"]["id_column"] == "row_id"
    assert cfg["data"]["feature_columns"] == ["f0", "f1", "f2", "f3"]  # numeric, minus label and id
    assert Path(run_dir, cfg["data"]["path"]).resolve() == (run_dir.parent / "my.csv").resolve()
    assert check_config(load_config([run_dir / "config.yaml"]), ROOT / "workflow" / "schemas")["data"]["noise"] == \
        {"fraction": 0.0, "seed": 0}


def test_the_workflow_runs_in_the_folder_with_the_repositorys_rules(run_dir) -> None:
    proc = _datasel(run_dir.parent, "run", "run1", "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "prepare" in proc.stdout and "results/selections/el2n_offset_keep50.parquet" in proc.stdout
    assert not (run_dir / "config").exists()  # no config/ copied in
    # the plain Snakemake form works as well, from anywhere
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(run_dir), "--configfile", str(run_dir / "config.yaml"), "-n", "--cores", "1"],
                          cwd=ROOT.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _texts(path: Path, rows: int) -> Path:
    pl.DataFrame({"uid": [f"t{i}" for i in range(rows)],
                  "body": [f"text {i} about {'cats' if i % 2 else 'dogs'}" for i in range(rows)],
                  "kind": ["pos" if i % 2 else "neg" for i in range(rows)]}).write_ndjson(path)
    return path


def test_a_text_folder_trains_and_reports_like_a_table(tmp_path) -> None:
    _texts(tmp_path / "t.jsonl", 300)
    proc = _datasel(tmp_path, "init", "run1", "--template", "text", "--data", "t.jsonl", "--text", "body",
                    "--label", "kind", "--id", "uid")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "run1" / "config.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert (cfg["data"]["text_column"], cfg["data"]["label_column"], cfg["data"]["id_column"]) == ("body", "kind", "uid")
    # 3 epochs over the 210 training rows (300 less val 0.2 and test 0.1) at batch 32: ceil(630 / 32) steps
    assert cfg["training"]["budget"] == {"unit": "steps", "value": 20} and cfg["training"]["batch_size"] == 32
    assert "3 epochs x 210 training rows" in text  # the comment says how the number came about
    proc = _datasel(tmp_path, "run", "run1", "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for target in ("report/summary.md", "selections/text_coverage_keep50.parquet", "scores/el2n.parquet",
                   "metrics/train/el2n_offset_keep50/seed0.parquet", "metrics/train/full_keep100/seed2.parquet"):
        assert f"results/{target}" in proc.stdout, target


@pytest.mark.parametrize("args, option, closest", [
    (("--text", "bdy", "--label", "kind"), "--text", "'body'"),
    (("--label", "kind"), "--text", "template's default"),  # `text` unchecked before: no such column here
    (("--text", "body"), "--label", "template's default"),
    (("--text", "uid", "--label", "knd"), "--label", "'kind'"),
    (("--text", "body", "--label", "kind", "--id", "id"), "--id", "'uid'"),
])
def test_init_text_checks_every_column_it_writes(tmp_path, args, option, closest) -> None:
    data = _texts(tmp_path / "t.jsonl", 20)
    kwargs = dict(zip(("text_column" if a == "--text" else "label" if a == "--label" else "id_column"
                       for a in args[::2]), args[1::2]))
    with pytest.raises(DataselError) as exc:
        init_folder(tmp_path / "run", "text", data=str(data), **kwargs)
    assert exc.value.field == option and closest in str(exc.value), str(exc.value)
    assert not (tmp_path / "run").exists()


def test_init_text_refuses_a_text_column_of_numbers_and_text_with_the_tabular_template(tmp_path) -> None:
    data = tmp_path / "t.csv"
    pl.DataFrame({"n": list(range(20)), "label": [0, 1] * 10}).write_csv(data)
    with pytest.raises(DataselError, match="not text"):
        init_folder(tmp_path / "run", "text", data=str(data), text_column="n")
    with pytest.raises(DataselError, match="--template text"):
        init_folder(tmp_path / "run", "tabular", data=str(data), text_column="n")


def test_an_edited_data_file_reruns_prepare(run_dir) -> None:
    target = "results/examples/examples.parquet"
    proc = _datasel(run_dir.parent, "run", "run1", "--cores", "1", target)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    meta = json.loads((run_dir / "results" / "examples" / "meta.json").read_text())
    assert sum(meta["sizes"].values()) == 150 and meta["noisy"] == 0
    assert "Nothing to be done" in _datasel(run_dir.parent, "run", "run1", "-n", target).stdout
    csv = run_dir.parent / "my.csv"
    st = csv.stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # touched, same bytes: content decides
    assert "Nothing to be done" in _datasel(run_dir.parent, "run", "run1", "-n", target).stdout
    raw = csv.read_bytes()
    at = raw.index(b"\n1000,") + 1
    csv.write_bytes(raw[:at] + b"1999" + raw[at + 4:])  # one id edited: same size, and the mtime put back
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    dry = _datasel(run_dir.parent, "run", "run1", "-n", target)
    assert dry.returncode == 0 and "rule prepare" in dry.stdout and "Params have changed" in dry.stdout
    _user_csv(csv, 120)  # the user's file shrinks
    dry = _datasel(run_dir.parent, "run", "run1", "-n", target)
    assert dry.returncode == 0 and "rule prepare" in dry.stdout and "Nothing to be done" not in dry.stdout


def test_init_never_replaces_an_existing_config(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("# mine\n")
    with pytest.raises(DataselError, match="already has a config"):
        init_folder(tmp_path, "default")
    assert (tmp_path / "config.yaml").read_text() == "# mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left behind


@pytest.mark.parametrize("template", ["default", "quality_cpu", "alchemist_mnist1d", "cures_tiny"])
def test_experiment_templates_are_complete(tmp_path, template) -> None:
    assert template in templates()
    path = init_folder(tmp_path / template, template)
    raw = yaml.safe_load(path.read_text())
    assert "extends" not in raw  # the folder does not depend on the repository's config files
    schemas = ROOT / "workflow" / "schemas"
    expected = check_config(load_config([ROOT / "config" / "experiments" / f"{template}.yaml"]
                                        if template != "default" else [ROOT / "config" / "config.yaml"]), schemas)
    assert check_config(load_config([path]), schemas) == expected


def test_unknown_template_is_refused_naming_the_choices(tmp_path) -> None:
    with pytest.raises(DataselError, match="tabular"):
        init_folder(tmp_path, "tabluar")


@pytest.mark.parametrize("option, kwargs", [("--label", {"label": "tagret"}), ("--id", {"id_column": "rowid"})])
def test_init_refuses_a_column_the_file_lacks_naming_the_closest(tmp_path, option, kwargs) -> None:
    data = _user_csv(tmp_path / "my.csv", 20)
    with pytest.raises(DataselError, match=f"field '{option}'") as exc:
        init_folder(tmp_path / "run", "tabular", data=str(data), **{"label": "target", **kwargs})
    assert ("'target'" if option == "--label" else "'row_id'") in str(exc.value)  # did you mean …
    assert not (tmp_path / "run").exists()  # a misspelt label never becomes a feature column of a written config


def test_run_refuses_a_bad_config_or_a_missing_folder_before_snakemake_starts(tmp_path, monkeypatch) -> None:
    import datasel.runfolder as rf

    monkeypatch.setattr(rf.subprocess, "call", lambda cmd: pytest.fail(f"Snakemake started: {cmd}"))
    folder = init_folder(tmp_path / "run1", "default").parent
    cfg = folder / "config.yaml"
    cfg.write_text(cfg.read_text().replace("  seeds: 5 ", "  seedz: 5 "))
    with pytest.raises(DataselError, match="did you mean `seeds`") as exc:
        rf.run_folder([str(folder), "-n"])
    assert str(cfg.resolve()) in str(exc.value) or str(cfg) in str(exc.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataselError, match="no run folder 'run2'"):
        rf.run_folder(["run2", "-n"])
    # a data file that is not there: one error naming the config file and data.path, not Snakemake's block
    data = tmp_path / "my.csv"
    data.write_text("a,b,target\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    folder3 = init_folder(tmp_path / "run3", "tabular", data=str(data), label="target").parent
    data.rename(tmp_path / "moved.csv")
    with pytest.raises(DataselError, match="does not exist") as exc:
        rf.run_folder([str(folder3), "-n"])
    assert exc.value.field == "data.path" and "config.yaml" in str(exc.value.file)
    assert Path.cwd() == tmp_path  # the check looked in the run folder and came back


def test_init_names_a_ragged_line_of_the_data_file(tmp_path) -> None:
    data = _user_csv(tmp_path / "my.csv", 20)
    lines = data.read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 2)[0]  # line 7 loses its last two fields
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataselError, match="too few fields on line 7: 5, expected 7"):
        init_folder(tmp_path / "run", "tabular", data=str(data), label="target")
    assert not (tmp_path / "run").exists()
