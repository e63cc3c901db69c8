"""Bad input is refused with a short error naming file, field and fix, at the step that reads it.

Already covered elsewhere (not repeated here): empty dataset, single class, labels above the class count, NaN and
inf inputs, duplicate ids, missing label column and non-numeric features in `tests/test_data.py`; a truncated
table, missing column and wrong dtype on write, duplicate table ids in `tests/test_tables.py`; a feature shard
of another dimension or projector seed (read, resume and gather) in `tests/test_store.py`; fractions > 1, a
non-integer epoch and dangling score names in the config in `tests/test_workflow.py`.

Here: the same faults as they reach pipeline steps through `run_step` (exit 3, one message, no traceback),
tables that are not Parquet, read-side column and dtype faults, NaN scores, stale score tables, negative labels,
fractions outside (0, 1], unknown method and policy names, checkpoints of another model or truncated (also through
the score step), stale or empty selections at the train step, a gathered feature set whose shard was swapped for
one of another dimension, and configs that fail the schema.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from conftest import TINY, snakemake, write_config, write_results

from datasel.data.prepare import build_examples
from datasel.errors import ConfigError, DataError, DataselError
from datasel.models import build_model
from datasel.pipeline import score, select, train
from datasel.scoring import SCORERS
from datasel.selection import POLICIES
from datasel.selection.make import make_selection
from datasel.snakemake_entry import EXIT_DATASEL, run_step
from datasel.store import read_table, write_table
from datasel.training.proxy import load_checkpoint, save_checkpoint


def refused(exc: pytest.ExceptionInfo, *needles: str) -> str:
    """The error names where (file or field) and how to fix, and mentions every needle."""
    err = exc.value
    assert isinstance(err, DataselError)
    assert err.fix, f"no fix in {err!s}"
    assert err.file is not None or err.field is not None, f"no location in {err!s}"
    text = str(err)
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    assert len(text) < 600 and "Traceback" not in text
    return text


def fake_job(tmp: Path, rule: str, **fields: Any) -> SimpleNamespace:
    """What run_step reads of the object Snakemake hands a script (the rule's name, its log, the config's compute
    section), plus ``fields`` (params, output) for a runner adapter such as over_outputs. The step itself is called
    with typed arguments."""
    return SimpleNamespace(log=[str(tmp / f"{rule}.log")], rule=rule, config={"compute": {"threads": 1}}, **fields)


@pytest.fixture()
def results(tmp_path, tiny_examples):
    df, meta = tiny_examples
    res, scores = write_results(tmp_path, df, meta, "sum", "s")
    write_table(scores, res / "scores" / "s.parquet", "scores")
    return res, df, scores


def step_error(tmp_path: Path, rule: str, capsys) -> str:
    """What a refused step left for the user: its message in the rule's log (the Snakemake process prints it once at
    the end of the run, see datasel/snakemake_entry.py), and nothing of it on stderr."""
    assert "datasel error" not in capsys.readouterr().err
    return (tmp_path / f"{rule}.log").read_text()


def _run_select(tmp_path: Path, res: Path, capsys) -> str:
    """Run the selection step as the `select` rule would; return what the user sees on stderr."""
    with pytest.raises(SystemExit) as code:
        run_step(fake_job(tmp_path, "select"), lambda s: select(
            "s_top", {"policy": "top", "score": "s"}, 0.5, 0, res / "examples" / "examples.parquet",
            res / "selections" / "s_top_keep50.parquet", scores=res / "scores" / "s.parquet"))
    assert code.value.code == EXIT_DATASEL
    err = step_error(tmp_path, "select", capsys)
    assert "datasel error in rule 'select'" in err and "fix:" in err and "Traceback" not in err
    assert not (res / "selections" / "s_top_keep50.parquet").exists(), "a refused step left an output"
    return err


# ---- tables as a step reads them ----

TABLE_FAULTS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot read as Parquet"),
    "not parquet": (lambda p: p.write_text("example_id,score\ne1,0.5\n"), "cannot read as Parquet"),
    "empty file": (lambda p: p.write_bytes(b""), "cannot read as Parquet"),
    "missing column": (lambda p: pl.read_parquet(p).drop("rank").write_parquet(p), "field 'rank'"),
    "wrong dtype": (lambda p: pl.read_parquet(p).with_columns(pl.col("score").cast(pl.String)).write_parquet(p),
                    "field 'score'"),
    "NaN score": (lambda p: pl.read_parquet(p).with_columns(
        pl.when(pl.col("rank") == 3).then(float("nan")).otherwise(pl.col("score")).alias("score")).write_parquet(p),
        "NaN or inf"),
    "inf score": (lambda p: pl.read_parquet(p).with_columns(
        pl.when(pl.col("rank") == 1).then(float("inf")).otherwise(pl.col("score")).alias("score")).write_parquet(p),
        "NaN or inf"),
    "stale (rows missing)": (lambda p: pl.read_parquet(p).head(100).write_parquet(p), "have no score"),
    "duplicate ids": (lambda p: pl.concat([pl.read_parquet(p), pl.read_parquet(p).head(2)]).write_parquet(p),
                      "duplicated 'example_id'"),
}


@pytest.mark.parametrize("fault", sorted(TABLE_FAULTS))
def test_bad_score_table_fails_the_select_step_cleanly(tmp_path, results, capsys, fault):
    res, _, _ = results
    mutate, needle = TABLE_FAULTS[fault]
    path = res / "scores" / "s.parquet"
    mutate(path)
    err = _run_select(tmp_path, res, capsys)
    assert needle in err and str(path) in err
    assert "fix:" in (tmp_path / "select.log").read_text()  # the rule's log holds the same message


def test_examples_with_duplicate_ids_or_wrong_dtype_are_refused_on_read(tmp_path, tiny_examples):
    df, _ = tiny_examples
    path = tmp_path / "examples.parquet"
    pl.concat([df, df.head(1)]).write_parquet(path)
    with pytest.raises(DataError) as e:
        read_table(path, "examples")
    refused(e, "example_id", str(path))
    df.with_columns(pl.col("label").cast(pl.String)).write_parquet(path)
    with pytest.raises(DataError) as e:
        read_table(path, "examples")
    assert e.value.field == "label"
    refused(e, "Int64")


@pytest.mark.parametrize("content", [b"", b"PAR1garbagePAR1", b"\x00" * 64])
def test_user_data_file_that_is_not_parquet(tmp_path, content):
    path = tmp_path / "mine.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        build_examples({"source": "files", "path": str(path), "feature_columns": ["a"]})
    refused(e, "mine.parquet", "not truncated")


def test_negative_labels_are_out_of_range_of_num_classes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.parquet"
    pl.DataFrame({"a": rng.normal(size=30), "cls": [-1, 0, 1] * 10}).write_parquet(path)
    cfg = {"source": "files", "path": str(path), "label_column": "cls", "feature_columns": ["a"]}
    with pytest.raises(DataError) as e:  # num_classes: labels are the indices 0..n-1 themselves
        build_examples({**cfg, "num_classes": 3})
    assert e.value.field == "cls"
    refused(e, "outside the classes", "d.parquet")
    _, meta = build_examples(cfg)  # without it, -1/0/1 are three classes like any other values
    assert meta["classes"] == ["-1", "0", "1"]


# ---- a data file's faulty line, named as an editor numbers it ----
# 66 fields: an id, 64 pixels and a string label; a multi-line quoted id in line 3-4 moves the lines after it on,
# so a row index (or a count of newlines) would name the wrong line.
_PX = [f"px_{i}" for i in range(64)]
_DIGITS = {"source": "files", "label_column": "digit", "id_column": "id", "feature_columns": _PX}


def _digits_csv(path: Path, edit=None) -> Path:
    rows = [[f"img{i}", *(str((i * 7 + j) % 17) for j in range(64)), ["zero", "one", "two"][i % 3]] for i in range(12)]
    rows[1][0] = '"img\n1"'  # a quoted id spanning two lines (lines 3 and 4)
    if edit:
        edit(rows)
    path.write_text("id," + ",".join(_PX) + ",digit\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("edit, needles", [
    (lambda rows: rows.__setitem__(8, rows[8][:-3]), ("too few fields on line 11: 63, expected 66",)),
    (lambda rows: rows[8].pop(40), ("too few fields on line 11: 65, expected 66",)),
    (lambda rows: rows[8].append("9"), ("too many fields on line 11: 67, expected 66", "quote")),
    (lambda rows: rows.insert(8, []), ("line 11 is blank",)),
])
def test_a_ragged_csv_line_is_named_with_its_editor_line_number(tmp_path, edit, needles):
    path = _digits_csv(tmp_path / "digits.csv", edit)
    with pytest.raises(DataError) as e:
        build_examples({**_DIGITS, "path": str(path)})
    refused(e, "digits.csv", *needles)


def test_the_well_formed_csv_reads_and_an_empty_label_names_its_line(tmp_path):
    df, meta = build_examples({**_DIGITS, "path": str(_digits_csv(tmp_path / "ok.csv"))})
    assert df.height == 12 and meta["classes"] == ["one", "two", "zero"]

    def blank_label(rows):
        rows[8][-1] = ""
    with pytest.raises(DataError) as e:
        build_examples({**_DIGITS, "path": str(_digits_csv(tmp_path / "nolabel.csv", blank_label))})
    assert e.value.field == "digit"
    refused(e, "1 rows have no label (the first on line 11)")


@pytest.mark.parametrize("bad, needles", [
    ('{"text": "b", "label": 1,}', ("line 4 is not valid JSON",)),
    ('["b", 1]', ("line 4 holds a JSON array, not an object",)),
    ('"b"', ("line 4 holds a JSON string, not an object",)),
])
def test_a_bad_jsonl_line_is_named(tmp_path, bad, needles):
    path = tmp_path / "pairs.jsonl"
    good = [json.dumps({"text": t, "label": i % 2}) for i, t in enumerate("xyz")]
    path.write_text("\n".join([good[0], "", good[1], bad, good[2]]) + "\n")  # line 2 blank: skipped, counted
    with pytest.raises(DataError) as e:
        build_examples({"source": "files", "path": str(path), "text_column": "text"})
    refused(e, "pairs.jsonl", *needles)


def test_a_jsonl_row_without_text_names_its_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"label": 0}, {"text": "d", "label": 1}]
    path.write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")  # blank lines between rows
    with pytest.raises(DataError) as e:
        build_examples({"source": "files", "path": str(path), "text_column": "text"})
    refused(e, "rows have no text (the first on line 5)")


# ---- config values the schema cannot see at run time ----

@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0001, 2.0, math.nan, math.inf])
def test_kept_fraction_outside_unit_interval(results, fraction):
    _, df, scores = results
    with pytest.raises(ConfigError) as e:
        make_selection(df, scores, "s_top", {"policy": "top", "score": "s"}, fraction, 0)
    assert e.value.field == "selection.fractions"
    refused(e, "outside (0, 1]")


def test_fraction_one_keeps_everything(results):
    _, df, scores = results
    sel = make_selection(df, scores, "s_top", {"policy": "top", "score": "s"}, 1.0, 0)
    assert sel.get_column("selected").all()


def test_unknown_method_and_policy_names_list_the_known_ones(results):
    _, df, scores = results
    with pytest.raises(ConfigError) as e:
        SCORERS.get("el3n", where="scoring.el2n.method")
    refused(e, "unknown scoring method 'el3n'", "scoring.el2n.method", "el2n")
    with pytest.raises(ConfigError) as e:
        make_selection(df, scores, "mine", {"policy": "offsett", "score": "s"}, 0.5, 0)
    assert e.value.field == "selection.policies.mine.policy"
    refused(e, "unknown selection policy 'offsett'", "offset")
    assert "offset" in POLICIES.names()


# ---- checkpoints ----

@pytest.fixture()
def checkpoint(tmp_path, tiny_examples):
    _, meta = tiny_examples
    cfg = {"name": "mlp", "hidden": [32]}
    model = build_model(cfg, meta)
    path = tmp_path / "proxy" / "seed0" / "epoch1.pt"
    save_checkpoint(path, model, model_cfg=cfg, epoch=1, seed=0)
    return path, cfg, meta


def test_checkpoint_from_a_different_model(checkpoint):
    path, cfg, meta = checkpoint
    assert isinstance(load_checkpoint(path, meta, cfg), torch.nn.Module)
    with pytest.raises(DataError) as e:
        load_checkpoint(path, meta, {"name": "mlp", "hidden": [64]})
    assert e.value.field == "proxy.model"
    refused(e, str(path), "rerun the proxy step")
    with pytest.raises(DataError) as e:
        load_checkpoint(path, meta, {"name": "cnn1d", "channels": 32})
    refused(e, "cnn1d")


def test_checkpoint_whose_weights_do_not_fit(checkpoint):
    path, cfg, meta = checkpoint
    ckpt = torch.load(path, weights_only=False)
    ckpt["model_cfg"] = {"name": "mlp", "hidden": [16]}  # claims a model its weights do not belong to
    torch.save(ckpt, path)
    with pytest.raises(DataError) as e:
        load_checkpoint(path, meta)
    refused(e, "does not fit the model", str(path))


def test_checkpoint_for_data_of_another_shape(checkpoint):
    path, _, meta = checkpoint
    with pytest.raises(DataError) as e:
        load_checkpoint(path, {**meta, "input_dim": meta["input_dim"] + 1})
    refused(e, "does not fit")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint(checkpoint, damage):
    path, cfg, meta = checkpoint
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage])
    with pytest.raises(DataError) as e:
        load_checkpoint(path, meta, cfg)
    refused(e, "cannot load checkpoint", str(path))


def test_score_step_refuses_a_checkpoint_of_another_model(tmp_path, results, checkpoint, capsys):
    res, _, _ = results
    path, _, _ = checkpoint
    with pytest.raises(SystemExit) as code:
        run_step(fake_job(tmp_path, "score"), lambda s: score(
            "el2n", {"method": "el2n", "epoch": 1}, res / "examples" / "examples.parquet",
            res / "examples" / "meta.json", res / "scores" / "el2n.parquet", checkpoints=[path],
            model_cfg={"name": "mlp", "hidden": [64]}))
    err = step_error(tmp_path, "score", capsys)
    assert code.value.code == EXIT_DATASEL and "datasel error in rule 'score'" in err and str(path) in err
    assert "proxy.model" in err and "Traceback" not in err
    assert not (res / "scores" / "el2n.parquet").exists()


TRAIN_FAULTS = {
    "stale selection (unknown ids)": (lambda sel: pl.concat([sel, sel.head(1).with_columns(
        pl.lit("ghost").alias("example_id"), pl.lit(True).alias("selected"))]), "not training examples"),
    "nothing selected": (lambda sel: sel.with_columns(pl.lit(False).alias("selected"), pl.lit(0.0).alias("weight")),
                         "zero examples"),
}


@pytest.mark.parametrize("fault", sorted(TRAIN_FAULTS))
def test_train_step_refuses_a_bad_selection(tmp_path, results, capsys, fault):
    res, df, scores = results
    mutate, needle = TRAIN_FAULTS[fault]
    sel = make_selection(df, scores, "s_top", {"policy": "top", "score": "s"}, 0.5, 0)
    path = res / "selections" / "s_top_keep50.parquet"
    write_table(mutate(sel), path, "selections")
    training = {**TINY["training"], "budget": {"unit": "steps", "value": 2}}
    with pytest.raises(SystemExit) as code:
        run_step(fake_job(tmp_path, "train"), lambda s: train(
            res / "examples" / "examples.parquet", res / "examples" / "meta.json", path,
            res / "metrics" / "train" / "s_top_keep50" / "seed0.parquet", training, 0, "s_top_keep50",
            {"method": "s_top", "fraction": 0.5}))
    err = step_error(tmp_path, "train", capsys)
    assert code.value.code == EXIT_DATASEL and "datasel error in rule 'train'" in err and needle in err
    assert "fix:" in err and "Traceback" not in err
    assert not (res / "metrics").exists()


# ---- feature sets ----

def test_gathered_set_refuses_a_swapped_shard_of_another_dimension(tmp_path):
    from datasel.features.store import FeatureSet, ShardWriter, gather

    rng = np.random.default_rng(0)

    def shard(path: Path, ids: list[str], dim: int, seed: int = 0) -> Path:
        w = ShardWriter(path, {"dim": dim, "seed": seed, "split": "train", "checkpoint": "c"}, ids, len(ids))
        w.write(0, rng.normal(size=(len(ids), dim)).astype(np.float32))
        w.finalize()
        return path

    a = shard(tmp_path / "set" / "shard_0", ["a", "b"], 8)
    b = shard(tmp_path / "set" / "shard_1", ["c", "d"], 8)
    index = gather([a, b], tmp_path / "set" / "index.json")
    import shutil

    shutil.rmtree(b)
    shard(b, ["c", "d"], 16)  # recomputed with another projection dimension after the gather
    with pytest.raises(DataError) as e:
        FeatureSet.open(index)
    refused(e, "shard_1")
    with pytest.raises(DataError) as e:
        gather([a, b], tmp_path / "set" / "index2.json")
    assert e.value.field == "dim"
    refused(e, "disagrees")


# ---- configs that fail the schema: refused before any job runs ----

SCHEMA_FAULTS = {
    "unknown source": (lambda c: c["data"].__setitem__("source", "s3"), "source"),
    "missing checkpoints": (lambda c: c["proxy"].pop("checkpoints"), "checkpoints"),
    "zero batch size": (lambda c: c["training"].__setitem__("batch_size", 0), "batch_size"),
    "zero fraction": (lambda c: c["selection"].__setitem__("fractions", [0.0]), "fractions"),
    "noise of one": (lambda c: c["data"]["noise"].__setitem__("fraction", 1.0), "fraction"),
}


def _dry_run_refusal(tmp_path, mutate) -> str:
    """Dry-run TINY with one mistake; the run must fail before any job and print no traceback."""
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in text and "KeyError" not in text
    assert not (tmp_path / "results").exists()
    return text


@pytest.mark.parametrize("fault", sorted(SCHEMA_FAULTS))
def test_config_failing_the_schema(tmp_path, fault):
    mutate, needle = SCHEMA_FAULTS[fault]
    assert needle in _dry_run_refusal(tmp_path, mutate)


@pytest.mark.parametrize("where", ["method", "policy"])
def test_unknown_names_are_refused_before_any_job(tmp_path, where):
    cfg = copy.deepcopy(TINY)
    if where == "method":
        cfg["scoring"]["el2n"]["method"] = "el3n"
    else:
        cfg["selection"]["policies"]["random"]["policy"] = "randomm"
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and ("el3n" if where == "method" else "randomm") in text
    assert ("scoring.el2n.method" if where == "method" else "selection.policies.random.policy") in text
    assert not (tmp_path / "results").exists()


# Mistakes the JSON schema cannot see, refused by rules/common.smk before the DAG is built: an unknown model name,
# an unknown stage name, and a stage switched on without its config section.
PRE_JOB = {
    "unknown model": (lambda c: c["proxy"]["model"].__setitem__("name", "resnet9000"), "resnet9000"),
    "unknown stage": (lambda c: c.__setitem__("stages", ["selection", "selectoin"]), "selectoin"),
    "stage without its section": (lambda c: c.__setitem__("stages", ["selection", "features"]), "features"),
}


@pytest.mark.parametrize("fault", sorted(PRE_JOB))
def test_config_mistakes_are_refused_before_any_job(tmp_path, fault):
    mutate, needle = PRE_JOB[fault]
    text = _dry_run_refusal(tmp_path, mutate)
    assert needle in text
    assert "fix:" in text or "On instance" in text
