"""Exports join back: read an export and join it 1:1 with the user's own file on the user's id (or row number),
with the user's column names and values, the original label even where noise was injected, and no internal columns;
``datasel show`` lists kept and dropped rows with their scores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datasel.cli import main
from datasel.errors import DataselError
from datasel.export import export_selection, selected_rows
from datasel.export.show import show_rows
from datasel.scoring import finalize_scores
from datasel.selection.make import make_selection
from datasel.store import write_table

FEATURES = ["radius", "texture", "smooth"]
INTERNAL = {"example_id", "x", "source", "split", "label", "label_orig"}


def user_table(n: int = 90, labels=("benign", "malignant"), ids: bool = True, extra: dict | None = None) -> pl.DataFrame:
    """A user's tabular file: an id, three features, a free column and a label, in the user's column order."""
    rng = np.random.default_rng(7)
    cols = {"patient": [f"p{i * 7 % 1000:03d}" for i in range(n)]} if ids else {}
    cols.update({f: rng.normal(size=n).round(6) for f in FEATURES})
    cols["note"] = [f"visit {i}" for i in range(n)]
    cols.update(extra or {})
    cols["target"] = [labels[i] for i in rng.integers(0, len(labels), size=n)]
    return pl.DataFrame(cols)


def prepared(tmp_path: Path, user: pl.DataFrame, *, id_col: str | None = "patient", id_kept: bool = True,
             noisy_rows: tuple[int, ...] = (), text: str | None = None) -> Path:
    """A results folder as `prepare` writes it under the data contract (meta `columns`, `label_dtype`,
    `source_row`, `label_orig`), with the examples table in a shuffled order so only source_row tells the order."""
    values = user.get_column("target")
    as_int = values.dtype.is_integer()
    classes = [str(c) for c in sorted(values.unique().to_list())]
    index = {c: i for i, c in enumerate(classes)}
    orig = np.array([index[str(v)] for v in values.to_list()])
    label = orig.copy()
    label[list(noisy_rows)] = (label[list(noisy_rows)] + 1) % len(classes)
    n = user.height
    ids = [f"files-{v}" for v in user.get_column(id_col).to_list()] if id_col else [f"files-{i:016x}" for i in
                                                                                   np.random.default_rng(1).permutation(n)]
    fields = [c for c in user.columns if c != id_col]
    ex = user.drop(id_col) if id_col and not id_kept else user
    ex = ex.drop("target").rename({text: "text"} if text else {}).with_columns(
        pl.Series("example_id", ids), pl.lit("files").alias("source"),
        pl.Series("split", (["train"] * 6 + ["val", "test"] * 2)[: 10] * (n // 10 + 1))[:n],
        pl.Series("label", label, dtype=pl.Int64), pl.Series("label_orig", orig, dtype=pl.Int64),
        pl.Series("is_noisy", label != orig), pl.Series("source_row", np.arange(n), dtype=pl.Int64))
    if not text:
        ex = ex.with_columns(pl.concat_list([pl.col(f).cast(pl.Float32) for f in FEATURES]).alias("x"))
    ex = ex.sample(fraction=1.0, shuffle=True, seed=3)
    res = tmp_path / "results"
    write_table(ex, res / "examples" / "examples.parquet", "examples")
    meta = {"kind": "text" if text else "vector", "source": "files", "num_classes": len(classes), "classes": classes,
            "label_dtype": "int" if as_int else "str", "noisy": len(noisy_rows),
            "fields": [{"target": "label", text: "text"}.get(c, c) for c in fields],
            "columns": {"label": "target", "id": id_col, "text": text, "features": None if text else FEATURES}}
    (res / "examples" / "meta.json").write_text(json.dumps(meta))
    train = ex.filter(pl.col("split") == "train")
    scores = finalize_scores(train.select("example_id", pl.col("source_row").cast(pl.Float64).sin().alias("score")),
                             "el2n")
    write_table(scores, res / "scores" / "el2n.parquet", "scores")
    for name, cfg in [("el2n_top", {"policy": "top", "score": "el2n"}),
                      ("el2n_cl", {"policy": "top", "score": "el2n",
                                   "curriculum": {"order": "easy_to_hard", "score": "el2n"}})]:
        sel = make_selection(ex, scores, name, cfg, 0.5, 0, order_scores=scores)
        write_table(sel, res / "selections" / f"{name}_keep50.parquet", "selections")
    return res


def read_back(out: Path, fmt: str, name: str) -> pl.DataFrame:
    if fmt == "hf":
        import datasets

        return pl.from_arrow(datasets.load_from_disk(str(out)).data.table)
    reader = {"parquet": pl.read_parquet, "jsonl": pl.read_ndjson, "csv": pl.read_csv}[fmt]
    return reader(out / f"{name}.{fmt}")


def kept_count(res: Path, name: str) -> int:
    return int(pl.read_parquet(res / "selections" / f"{name}.parquet").get_column("selected").sum())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "hf"])
@pytest.mark.parametrize("id_kept", [True, False], ids=["id-column", "id-in-example_id"])
def test_an_export_joins_one_to_one_with_the_users_file_on_its_id(tmp_path, fmt, id_kept):
    user = user_table()
    user.write_csv(tmp_path / "patients.csv")
    res = prepared(tmp_path, user, id_kept=id_kept)
    out = export_selection(res, "el2n_top_keep50", fmt, tmp_path / "subset")
    back = read_back(out, fmt, "el2n_top_keep50")
    theirs = pl.read_csv(tmp_path / "patients.csv")
    assert back.columns == [*theirs.columns, "weight", "position"]  # their names, their order; no internal column
    assert not INTERNAL & set(back.columns)
    joined = back.join(theirs, on="patient", how="inner", suffix="_file")
    assert joined.height == back.height == kept_count(res, "el2n_top_keep50")
    assert back.get_column("patient").n_unique() == back.height
    for col in theirs.columns[1:]:
        assert joined.get_column(col).to_list() == joined.get_column(f"{col}_file").to_list(), col


def test_noise_is_never_exported_as_truth(tmp_path):
    user = user_table()
    flipped = tuple(range(0, 90, 3))
    res = prepared(tmp_path, user, noisy_rows=flipped)
    examples = pl.read_parquet(res / "examples" / "examples.parquet")
    assert (examples.get_column("label") != examples.get_column("label_orig")).sum() == len(flipped)
    back = read_back(export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "s"), "parquet", "el2n_top_keep50")
    joined = back.join(user.with_row_index("row"), on="patient", suffix="_file")
    assert joined.get_column("target").to_list() == joined.get_column("target_file").to_list()
    assert back.columns[-3:] == ["is_noisy", "weight", "position"]
    assert joined.get_column("is_noisy").to_list() == [r in flipped for r in joined.get_column("row").to_list()]
    assert joined.get_column("is_noisy").any()  # the subset does hold flipped rows, labelled with the truth


def test_integer_labels_come_back_as_the_users_integers(tmp_path):
    user = user_table(labels=(2, 40, 9))
    res = prepared(tmp_path, user)
    back = read_back(export_selection(res, "el2n_top_keep50", "csv", tmp_path / "s"), "csv", "el2n_top_keep50")
    assert back.schema["target"].is_integer()
    joined = back.join(user, on="patient", suffix="_file")
    assert joined.get_column("target").to_list() == joined.get_column("target_file").to_list()
    assert set(back.get_column("target").to_list()) <= {2, 40, 9}


def test_without_an_id_rows_carry_their_source_row(tmp_path):
    user = user_table(ids=False)
    res = prepared(tmp_path, user, id_col=None)
    back = read_back(export_selection(res, "el2n_top_keep50", "jsonl", tmp_path / "s", order="source"), "jsonl",
                     "el2n_top_keep50")
    assert back.columns == ["source_row", *user.columns, "weight", "position"]
    rows = back.get_column("source_row").to_list()
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    theirs = user.with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64))
    joined = back.join(theirs, on="source_row", suffix="_file")
    assert joined.height == back.height
    for col in user.columns:
        assert joined.get_column(col).to_list() == joined.get_column(f"{col}_file").to_list(), col


def test_row_order_curriculum_by_default_or_source_when_asked(tmp_path):
    user = user_table()
    res = prepared(tmp_path, user)
    file_row = {p: i for i, p in enumerate(user.get_column("patient").to_list())}
    cl = read_back(export_selection(res, "el2n_cl_keep50", "parquet", tmp_path / "a"), "parquet", "el2n_cl_keep50")
    assert cl.get_column("position").to_list() == list(range(cl.height))
    src = read_back(export_selection(res, "el2n_cl_keep50", "parquet", tmp_path / "b", order="source"), "parquet",
                    "el2n_cl_keep50")
    rows = [file_row[p] for p in src.get_column("patient").to_list()]
    assert rows == sorted(rows) and rows != [file_row[p] for p in cl.get_column("patient").to_list()]
    plain = read_back(export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "c"), "parquet", "el2n_top_keep50")
    rows = [file_row[p] for p in plain.get_column("patient").to_list()]
    assert rows == sorted(rows)  # no curriculum: the user's own order, not the id hash's
    with pytest.raises(DataselError, match="no curriculum order"):
        export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "d", order="curriculum")


def test_internal_columns_only_when_asked_and_user_names_are_never_taken(tmp_path):
    user = user_table(extra={"weight": np.arange(90) * 10.0})
    res = prepared(tmp_path, user)
    back = read_back(export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "s"), "parquet", "el2n_top_keep50")
    assert back.columns == [*user.columns, "datasel_weight", "position"]
    joined = back.join(user, on="patient", suffix="_file")
    assert joined.get_column("weight").to_list() == joined.get_column("weight_file").to_list()
    assert set(back.get_column("datasel_weight").to_list()) == {1.0}
    full = read_back(export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "i", internal=True), "parquet",
                     "el2n_top_keep50")
    assert {"example_id", "source", "split", "label", "label_orig", "x", "is_noisy", "source_row"} <= set(full.columns)
    assert full.columns[0] == "patient" and not any(c.startswith("datasel_") for c in full.columns if c != "datasel_weight")
    assert full.select(user.columns).equals(back.select(user.columns))


def test_a_text_column_comes_back_under_its_own_name(tmp_path):
    user = pl.DataFrame({"doc": [f"d{i}" for i in range(40)], "review": [f"text, with \"quotes\"\nline {i}" for i in
                                                                         range(40)],
                         "target": ["pos", "neg"] * 20})
    res = prepared(tmp_path, user, id_col="doc", text="review")
    back = read_back(export_selection(res, "el2n_top_keep50", "csv", tmp_path / "s"), "csv", "el2n_top_keep50")
    assert back.columns == ["doc", "review", "target", "weight", "position"]
    joined = back.join(user, on="doc", suffix="_file")
    assert joined.height == back.height
    assert joined.get_column("review").to_list() == joined.get_column("review_file").to_list()


def test_show_lists_kept_and_dropped_rows_with_their_scores(tmp_path, capsys):
    user = user_table()
    res = prepared(tmp_path, user)
    shown = show_rows(res, "el2n_top_keep50")
    assert shown.scores == res / "scores" / "el2n.parquet" and "policy name" in shown.scores_from
    scores = pl.read_parquet(res / "scores" / "el2n.parquet")
    sel = pl.read_parquet(res / "selections" / "el2n_top_keep50.parquet")
    assert shown.kept.height == kept_count(res, "el2n_top_keep50")
    assert shown.kept.height + shown.dropped.height == sel.height
    for part in (shown.kept, shown.dropped):
        assert part.get_column("rank").to_list() == sorted(part.get_column("rank").to_list())
        assert {"patient", "target", "radius", "score", "rank"} <= set(part.columns)
    assert {"weight", "position"} <= set(shown.kept.columns) and not {"weight", "position"} & set(shown.dropped.columns)
    # the top policy keeps the best ranks: every kept rank is ahead of every dropped one
    assert shown.kept.get_column("rank").max() < shown.dropped.get_column("rank").min()
    # scores belong to the right rows: look one up by the user's id
    examples = pl.read_parquet(res / "examples" / "examples.parquet")
    row = shown.dropped.row(0, named=True)
    eid = f"files-{row['patient']}"
    assert scores.filter(pl.col("example_id") == eid).get_column("score").item() == row["score"]
    assert examples.filter(pl.col("example_id") == eid).height == 1

    assert main(["show", "el2n_top_keep50", "--results", str(res), "--dropped", "--rows", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"{shown.kept.height} of {sel.height} training rows kept" in printed
    assert "kept:" in printed and "dropped:" in printed and "el2n.parquet" in printed and "patient" in printed
    assert main(["show", "el2n_top_keep50", "--results", str(res)]) == 0
    assert "dropped:" not in capsys.readouterr().out


def test_show_of_a_wide_table_prints_the_columns_that_matter_and_names_the_rest(tmp_path, capsys):
    wide = {f"px_{i}": [float(i)] * 90 for i in range(64)}
    res = prepared(tmp_path, user_table(extra=wide))
    shown = show_rows(res, "el2n_top_keep50")
    assert shown.columns == ("patient", "target", "score", "rank", "weight")  # no curriculum: no position
    assert set(shown.others) == {*FEATURES, "note", *wide} and set(shown.others).isdisjoint(shown.columns)
    assert show_rows(res, "el2n_cl_keep50").columns[-2:] == ("weight", "position")
    assert set(shown.kept.columns) == {*shown.columns, *shown.others, "position"}  # the frames hold every column
    assert main(["show", "el2n_top_keep50", "--results", str(res), "--dropped"]) == 0
    printed = capsys.readouterr().out
    table_head = printed.split("kept:", 1)[1].split("\n")[2]  # the header row of the kept table
    for col in ("patient", "target", "score", "rank", "weight"):
        assert col in table_head, (col, table_head)
    assert "px_0" not in table_head and "other columns (68, not shown" in printed and "px_63" in printed


def test_show_into_a_closed_pipe_stops_quietly(tmp_path):
    """`datasel show ... | head` where head has already gone: no traceback, the status of a tool SIGPIPE ended.
    The pipe's read end is closed before the command starts, so its first print meets the closed pipe every time."""
    res = prepared(tmp_path, user_table())
    cmd = [sys.executable, "-m", "datasel.cli", "show", "el2n_top_keep50", "--results", str(res), "--dropped"]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert closed.returncode == 141 and closed.stderr == "", closed.stderr
    # into a reader that stays: the whole listing and status 0
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0 and full.stderr == "" and "kept:" in full.stdout and "dropped:" in full.stdout


def test_show_finds_the_score_table_in_the_snakemake_record(tmp_path):
    """The score a selection was made from, as Snakemake recorded the select job's inputs (a real run)."""
    user = user_table()
    res = prepared(tmp_path, user)
    # a score table whose name the policy name does not start with: only the record can link them
    shutil.copy(res / "scores" / "el2n.parquet", res / "scores" / "grand.parquet")
    shutil.copy(res / "selections" / "el2n_top_keep50.parquet", tmp_path / "made.parquet")
    (tmp_path / "Snakefile").write_text(
        "rule select:\n"
        "    input: 'results/examples/examples.parquet', 'results/scores/grand.parquet'\n"
        "    output: 'results/selections/mix_keep50.parquet'\n"
        f"    shell: 'cp {tmp_path / 'made.parquet'} {{output}}'\n")
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(tmp_path), "-s",
                    str(tmp_path / "Snakefile"), "results/selections/mix_keep50.parquet"], check=True,
                   capture_output=True, timeout=120)
    shown = show_rows(res, "mix_keep50")
    assert shown.scores == res / "scores" / "grand.parquet" and "Snakemake record" in shown.scores_from
    assert show_rows(res, "mix_keep50", scores="el2n").scores == res / "scores" / "el2n.parquet"
    with pytest.raises(DataselError, match="unknown score table"):
        show_rows(res, "mix_keep50", scores="../el2n")


def test_the_real_prepare_output_joins_back(tmp_path):
    """End to end from the user's CSV through `prepare` (the data contract's columns, source_row, label_orig)."""
    from datasel.data.prepare import build_examples

    user = user_table()
    user.write_csv(tmp_path / "patients.csv")
    cfg = {"source": "files", "path": str(tmp_path / "patients.csv"), "label_column": "target",
           "feature_columns": FEATURES, "id_column": "patient", "noise": {"fraction": 0.2, "seed": 0}}
    ex, meta = build_examples(cfg)
    # the data contract prepare always writes: a missing piece is a regression, not a reason to skip
    assert {"label", "id", "features"} <= set(meta["columns"]), meta.get("columns")
    assert {"source_row", "label_orig"} <= set(ex.columns), ex.columns
    res = tmp_path / "results"
    write_table(ex, res / "examples" / "examples.parquet", "examples")
    (res / "examples" / "meta.json").write_text(json.dumps(meta))
    sel = make_selection(ex, None, "random", {"policy": "random"}, 0.5, 0)
    write_table(sel, res / "selections" / "random_keep50.parquet", "selections")
    back = read_back(export_selection(res, "random_keep50", "csv", tmp_path / "s"), "csv", "random_keep50")
    theirs = pl.read_csv(tmp_path / "patients.csv")
    assert [c for c in back.columns if c not in ("is_noisy", "weight", "position")] == theirs.columns
    joined = back.join(theirs, on="patient", suffix="_file")
    assert joined.height == back.height == int(sel.get_column("selected").sum())
    for col in theirs.columns[1:]:
        assert joined.get_column(col).to_list() == joined.get_column(f"{col}_file").to_list(), col


def test_feature_columns_are_unpacked_when_the_table_kept_only_x(tmp_path):
    user = user_table()
    res = prepared(tmp_path, user)
    path = res / "examples" / "examples.parquet"
    write_table(pl.read_parquet(path).drop(FEATURES), path, "examples")
    back = read_back(export_selection(res, "el2n_top_keep50", "parquet", tmp_path / "s"), "parquet", "el2n_top_keep50")
    assert back.columns == [*user.columns, "weight", "position"]
    joined = back.join(user, on="patient", suffix="_file")
    for f in FEATURES:
        np.testing.assert_allclose(joined.get_column(f).to_numpy(), joined.get_column(f"{f}_file").to_numpy(), rtol=1e-6)


def test_the_cli_takes_csv_order_and_internal_and_refuses_csv_lists_clearly(tmp_path, capsys):
    user = user_table()
    res = prepared(tmp_path, user)
    assert main(["export", "el2n_cl_keep50", "--format", "csv", "--order", "source", "--out", str(tmp_path / "a"),
                 "--results", str(res)]) == 0
    back = pl.read_csv(tmp_path / "a" / "el2n_cl_keep50.csv")
    assert back.columns == [*user.columns, "weight", "position"]
    # --internal brings the packed x list, which CSV cannot hold: refused before anything is written
    assert main(["export", "el2n_cl_keep50", "--format", "csv", "--internal", "--out", str(tmp_path / "b"),
                 "--results", str(res)]) == 1
    err = capsys.readouterr().err
    assert "CSV cannot hold the list column(s) ['x']" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_the_label_stays_where_the_users_file_has_it(tmp_path):
    """Through the real `prepare`: a label between the id and the features comes back in that place."""
    from datasel.data.prepare import build_examples

    user = user_table().select("patient", "target", *FEATURES, "note")
    user.write_csv(tmp_path / "patients.csv")
    ex, meta = build_examples({"source": "files", "path": str(tmp_path / "patients.csv"), "label_column": "target",
                               "feature_columns": FEATURES, "id_column": "patient"})
    res = tmp_path / "results"
    write_table(ex, res / "examples" / "examples.parquet", "examples")
    (res / "examples" / "meta.json").write_text(json.dumps(meta))
    write_table(make_selection(ex, None, "random", {"policy": "random"}, 0.5, 0),
                res / "selections" / "random_keep50.parquet", "selections")
    back = read_back(export_selection(res, "random_keep50", "csv", tmp_path / "s"), "csv", "random_keep50")
    assert back.columns == ["patient", "target", *FEATURES, "note", "weight", "position"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_export_holds_the_splits_asked_for_and_says_so(tmp_path, fmt, capsys):
    user = user_table()
    res = prepared(tmp_path, user)
    ex = pl.read_parquet(res / "examples" / "examples.parquet")
    n = {s: int((ex.get_column("split") == s).sum()) for s in ("train", "val", "test")}
    kept = kept_count(res, "el2n_top_keep50")
    # the default: the selection's kept training rows alone, as before, and the marker says so
    out = export_selection(res, "el2n_top_keep50", fmt, tmp_path / "train_only")
    marker = json.loads((out / ".datasel-export.json").read_text())
    assert marker["splits"] == ["train"] and marker["rows_per_split"] == {"train": kept}
    assert "split" not in read_back(out, fmt, "el2n_top_keep50").columns
    # train and val: the kept training rows, then every validation row, told apart by a split column
    assert main(["export", "el2n_top_keep50", "--format", fmt, "--splits", "val,train", "--results", str(res),
                 "--out", str(tmp_path / "tv")]) == 0
    printed = capsys.readouterr().out
    assert f"train {kept} rows (kept of {n['train']}), val {n['val']} rows" in printed
    back = read_back(tmp_path / "tv", fmt, "el2n_top_keep50")
    assert back.get_column("split").to_list() == ["train"] * kept + ["val"] * n["val"]
    marker = json.loads((tmp_path / "tv" / ".datasel-export.json").read_text())
    assert marker["splits"] == ["train", "val"] and marker["rows_per_split"] == {"train": kept, "val": n["val"]}
    val_ids = set(ex.filter(pl.col("split") == "val").get_column("example_id").str.strip_prefix("files-"))
    assert set(back.filter(pl.col("split") == "val").get_column("patient")) == val_ids
    assert back.filter(pl.col("split") == "val").get_column("weight").null_count() == n["val"]
    # a test split alone; a misspelt split is named with the closest one
    only_test = selected_rows(res, "el2n_top_keep50", splits="test")
    assert only_test.height == n["test"] and set(only_test.get_column("split")) == {"test"}
    with pytest.raises(DataselError, match="unknown split 'valid' \\(did you mean 'val'\\?\\)"):
        selected_rows(res, "el2n_top_keep50", splits="train,valid")


def test_a_misspelt_selection_gets_the_closest_name(tmp_path):
    res = prepared(tmp_path, user_table())
    with pytest.raises(DataselError) as exc:
        export_selection(res, "el2n_top_keep5", "csv", tmp_path / "s")
    assert "did you mean 'el2n_top_keep50'?" in str(exc.value) and "el2n_cl_keep50" in exc.value.fix
