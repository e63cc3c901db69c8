"""A user's config is the whole truth: no default merged in, unknown keys refused with a suggestion and the user's
file named, `extends:` explicit with named entries replaced whole, reserved names and kept fractions checked."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, snakemake, write_config

from datasel.config import check_config, load_config
from datasel.errors import ConfigError

SCHEMAS = ROOT / "workflow" / "schemas"


def _check(tmp_path: Path, cfg: dict, name: str = "user.yaml") -> dict:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return check_config(load_config([path]), SCHEMAS)


def _refusal(tmp_path: Path, edit) -> ConfigError:
    cfg = copy.deepcopy(TINY)
    edit(cfg)
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, cfg)
    return info.value


@pytest.mark.parametrize(
    "edit, key, suggestion",
    [
        (lambda c: c["data"].update(lable_column="y"), "data.lable_column", "label_column"),
        (lambda c: c["scoring"]["el2n"].update(epohc=c["scoring"]["el2n"].pop("epoch")), "scoring.el2n.epohc", "epoch"),
        (lambda c: c["selection"]["policies"]["el2n_offset"].update(ofset=0.2), "selection.policies.el2n_offset.ofset",
         "offset"),
        (lambda c: c["training"]["budget"].update(vaule=3), "training.budget.vaule", "value"),
        (lambda c: c["proxy"].update(batchsize=8), "proxy.batchsize", "batch_size"),
        (lambda c: c.update(scorng={}), "scorng", "scoring"),
        (lambda c: c["selection"]["policies"]["el2n_offset"].update(curriculum={"ordr": "easy_to_hard"}),
         "selection.policies.el2n_offset.curriculum.ordr", "order"),
    ],
)
def test_unknown_key_refused_with_the_closest_valid_key(tmp_path, edit, key, suggestion) -> None:
    err = _refusal(tmp_path, edit)
    assert err.field == key
    assert f"did you mean `{suggestion}`?" in str(err)
    assert err.file == str((tmp_path / "user.yaml").resolve())


def test_misspelt_epoch_is_reported_as_a_key_not_as_an_invented_value(tmp_path) -> None:
    # the proxy has no checkpoint 5: a default filled in for the missing `epoch` must not surface as "epoch 5"
    err = _refusal(tmp_path, lambda c: c["scoring"]["el2n"].update(epohc=5) or c["scoring"]["el2n"].pop("epoch"))
    assert "epohc" in str(err) and "not a proxy checkpoint" not in str(err)


def test_a_key_of_another_policy_is_refused_naming_the_valid_ones(tmp_path) -> None:
    err = _refusal(tmp_path, lambda c: c["selection"]["policies"]["el2n_offset"].update(mu=0.5))
    assert err.field == "selection.policies.el2n_offset.mu" and "offset" in str(err)


def test_an_offset_policy_without_its_offset_is_refused_before_any_job(tmp_path) -> None:
    # it used to pass the checks and fail in the select job, after proxy training, naming the field `offset`
    err = _refusal(tmp_path, lambda c: c["selection"]["policies"]["el2n_offset"].pop("offset"))
    assert err.field == "selection.policies.el2n_offset.offset"
    assert err.file == str((tmp_path / "user.yaml").resolve())
    assert "a share of the pool" in str(err)


def test_a_misspelt_choice_gets_the_closest_valid_one(tmp_path) -> None:
    err = _refusal(tmp_path, lambda c: c["training"].update(optimizer="adamm"))
    assert err.field == "training.optimizer"
    assert "did you mean `adam`?" in str(err) and "adam, adamw, sgd" in str(err)
    # a bad value of an optimizer key is that value's error, not an "unknown key `?`" (they come in through allOf)
    err = _refusal(tmp_path, lambda c: c["training"].update(lr=-1))
    assert err.field == "training.lr" and "training.lr must be more than 0; got -1" in str(err)


def test_a_pca_basis_with_another_projection_is_refused(tmp_path) -> None:
    def edit(c: dict) -> None:
        c["features"] = {"sets": {"g": {"projection": "dense", "factor_basis": "pca"}}}

    err = _refusal(tmp_path, edit)
    assert err.field == "features.sets.g.projection"
    assert "basis of the factored projection (drop factor_basis" in str(err)
    assert err.fix == "set features.sets.g.projection: factored"
    ok = copy.deepcopy(TINY)
    ok["features"] = {"sets": {"g": {"factor_basis": "pca"}}}  # the default projection is factored
    assert _check(tmp_path, ok)["features"]["sets"]["g"]["factor_basis"] == "pca"


def test_stage_sections_refuse_unknown_keys_too(tmp_path) -> None:
    cfg = {"stages": ["dga"], "dga": {"train": {"stpes": 5}}}
    with pytest.raises(ConfigError, match=r"did you mean `steps`") as info:
        _check(tmp_path, cfg)
    assert info.value.field == "dga.train.stpes"


def test_typo_refused_through_snakemake_naming_the_users_file(tmp_path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["data"]["lable_column"] = "y"
    path = write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(path) in out and "lable_column" in out and "did you mean `label_column`?" in out
    assert "Traceback" not in out


def _selections(dry_run_output: str) -> set[str]:
    return set(re.findall(r"results/selections/(\w+)\.parquet", dry_run_output))


def test_a_users_config_runs_exactly_its_own_policies(tmp_path) -> None:
    # the user's file next to nothing: the repository's config/config.yaml (el2n_top, grand_offset, ...) is not merged
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump(TINY))
    proc = snakemake(tmp_path, "-n", f"--configfile={user}")
    assert _selections(proc.stdout) == {"random_keep50", "el2n_offset_keep50", "full_keep100"}
    assert set(re.findall(r"results/scores/(\w+)\.parquet", proc.stdout)) == set(TINY["scoring"])


def test_no_label_noise_unless_the_config_asks(tmp_path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["data"].pop("noise")
    assert _check(tmp_path, cfg)["data"]["noise"]["fraction"] == 0.0
    # the embedded default experiment asks for it explicitly, and an extending file inherits it explicitly
    (tmp_path / "exp.yaml").write_text(f"extends: {ROOT / 'config' / 'config.yaml'}\nproxy: {{seeds: 2}}\n")
    merged = check_config(load_config([tmp_path / "exp.yaml"]), SCHEMAS)
    assert merged["data"]["noise"]["fraction"] == 0.2 and merged["proxy"]["seeds"] == 2


def test_extends_merges_plain_sections_and_replaces_named_ones(tmp_path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "base.yaml").write_text(yaml.safe_dump(TINY))
    child = {"extends": "base/base.yaml", "proxy": {"epochs": 5, "checkpoints": [0, 5]},
             "scoring": {"el2n": {"method": "el2n", "epoch": 5}},
             "selection": {"policies": {"random": {"policy": "random"}}}}
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    cfg = check_config(load_config([tmp_path / "child.yaml"]), SCHEMAS)
    assert cfg["proxy"]["model"] == TINY["proxy"]["model"] and cfg["proxy"]["epochs"] == 5  # merged
    assert list(cfg["scoring"]) == ["el2n"]  # replaced: the base's grand is not inherited
    assert list(cfg["selection"]["policies"]) == ["random"]  # replaced ...
    assert cfg["selection"]["fractions"] == TINY["selection"]["fractions"]  # ... while the section's plain keys merge


def test_extends_names_the_file_a_typo_is_in_and_refuses_loops(tmp_path) -> None:
    bad = copy.deepcopy(TINY)
    bad["data"]["spilts"] = {}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nproxy: {seeds: 1}\n")
    with pytest.raises(ConfigError, match="did you mean `splits`") as info:
        check_config(load_config([tmp_path / "child.yaml"]), SCHEMAS)
    assert info.value.file == str((tmp_path / "base.yaml").resolve())
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config([tmp_path / "a.yaml"])
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml") as info:
        load_config([tmp_path / "c.yaml"])
    assert info.value.field == "extends"


@pytest.mark.parametrize("name", ["full", "full_keep50", "full_top", "random"])
def test_reserved_policy_names_are_refused_for_other_policies(tmp_path, name) -> None:
    err = _refusal(tmp_path, lambda c: c["selection"]["policies"].update({name: {"policy": "top", "score": "el2n"}}))
    assert err.field == f"selection.policies.{name}" and "reserved" in str(err)


def test_reserved_names_pass_with_their_own_policy(tmp_path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["selection"]["policies"]["full"] = {"policy": "full"}
    cfg["selection"]["policies"]["fullish"] = {"policy": "top", "score": "el2n"}  # only `full` / `full_*`
    assert "fullish" in _check(tmp_path, cfg)["selection"]["policies"]


def test_a_scoring_entry_naming_a_missing_feature_set_is_refused(tmp_path) -> None:
    def scorer(features: str, sets: dict | None) -> Callable:
        def edit(c: dict) -> None:
            c["scoring"]["align"] = {"method": "target_alignment", "features": features}
            if sets is not None:
                c["features"] = {"sets": sets}
        return edit

    err = _refusal(tmp_path, scorer("rds", {"less": {}}))
    assert err.field == "scoring.align.features" and "'rds'" in str(err) and "use one of: less" in err.fix
    err = _refusal(tmp_path, scorer("grads/seed0-epoch1", None))
    assert err.field == "scoring.align.features" and "features: sets:" in err.fix
    cfg = copy.deepcopy(TINY)
    scorer("less/seed0-epoch1", {"less": {}})(cfg)
    assert _check(tmp_path, cfg)["scoring"]["align"]["features"] == "less/seed0-epoch1"


def test_representation_features_are_refused_outside_instruction_data(tmp_path) -> None:
    err = _refusal(tmp_path, lambda c: c.update(features={"sets": {"reps": {"kind": "representation"}}}))
    assert err.field == "features.sets.reps.kind" and "causal LM" in str(err) and "data.source: instruct" in err.fix


@pytest.mark.parametrize("fractions, shown", [([0.004], "0.004"), ([0.555], "0.555"), ([0.5, 0.501], "0.501")])
def test_kept_fractions_must_be_distinct_whole_percents(tmp_path, fractions, shown) -> None:
    err = _refusal(tmp_path, lambda c: c["selection"].update(fractions=fractions))
    assert err.field == "selection.fractions" and shown in str(err)


def test_whole_percents_pass(tmp_path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["selection"]["fractions"] = [0.01, 0.07, 0.29, 0.57, 1.0]  # 0.29 * 100 and 0.57 * 100 are not exact floats
    assert _check(tmp_path, cfg)["selection"]["fractions"] == [0.01, 0.07, 0.29, 0.57, 1.0]


@pytest.mark.parametrize("experiment", sorted(p.name for p in (ROOT / "config" / "experiments").glob("*.yaml")))
def test_every_shipped_config_is_complete_or_extends_explicitly(experiment) -> None:
    path = ROOT / "config" / "experiments" / experiment
    cfg = check_config(load_config([path]), SCHEMAS)
    raw = yaml.safe_load(path.read_text())
    if "extends" not in raw:  # complete on its own: nothing came from elsewhere
        assert set(cfg) >= set(raw)
    assert cfg["stages"]


def test_missing_data_path_is_refused_in_a_dry_run(tmp_path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["data"] = {"source": "files", "path": "nope.csv", "feature_columns": ["a"]}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "data.path" in out and "nope.csv" in out


@pytest.mark.parametrize("edit, field, problem, fix", [
    (lambda c: c["selection"].update(fractions=[0]), "selection.fractions.0",
     "a kept fraction must be in (0, 1]; got 0", "set selection.fractions.0 to a value in (0, 1]"),
    (lambda c: c["selection"].update(fractions=[0.5, 1.5]), "selection.fractions.1",
     "a kept fraction must be in (0, 1]; got 1.5", "in (0, 1]"),
    (lambda c: c["proxy"].update(batch_size=0), "proxy.batch_size", "proxy.batch_size must be at least 1; got 0",
     "set proxy.batch_size to at least 1"),
    (lambda c: c["proxy"].update(lr=0), "proxy.lr", "proxy.lr must be more than 0; got 0", "more than 0"),
    (lambda c: c["proxy"].update(lr="fast"), "proxy.lr", "proxy.lr must be a number; got 'fast'",
     "write proxy.lr as a number"),
    (lambda c: c["selection"].update(fractions=[]), "selection.fractions",
     "selection.fractions must list at least 1 item; got 0", "list at least 1 item in selection.fractions"),
    (lambda c: c.update(features={"sets": {"g": {"dim": -1}}}), "features.sets.g.dim",
     "must be at least 0; got -1", "projection dimension"),  # a stage section, with the key's description
])
def test_a_value_out_of_bounds_or_of_the_wrong_type_is_refused_in_plain_words(tmp_path, edit, field, problem,
                                                                                fix) -> None:
    err = _refusal(tmp_path, edit)
    assert err.field == field
    assert problem in err.problem and fix in err.fix
    assert "schema" not in str(err) and "workflow/" not in str(err)  # no pointer into the schema files
