"""datasel.workflow_support: the rule files' path lists equal what Snakemake's expand gave (same paths, same order:
a params repr that changed order would rerun jobs), and refusals name the field."""

from types import SimpleNamespace

import pytest
from snakemake.io import expand

from datasel import workflow_support as ws
from datasel.errors import ConfigError

RUN = {"selection": {"fractions": [0.25, 0.5], "policies": {"random": {"policy": "random"},
                                                            "flt": {"policy": "filter", "score": "el2n"}}},
       "training": {"seeds": [0, 1, 2]}, "scoring": {"el2n": {"method": "el2n"}}}


def test_train_paths_match_expand():
    names = ws.selection_names(RUN)
    assert names == ["random_keep25", "random_keep50", "flt_keep25", "flt_keep50", "flt_keep100", "full_keep100"]
    assert ws.train_metrics(RUN, "results") == expand("{root}/metrics/train/{selection}/seed{seed}.parquet",
                                                      root="results", selection=names, seed=[0, 1, 2])
    assert ws.train_seed_outputs([3, 1]) == expand("{{root}}/metrics/train/{{selection}}/seed{seed}.parquet",
                                                   seed=[3, 1])


def test_dga_tables_match_expand():
    dga = {"strategies": ["uniform", "dga"], "seeds": [0, 1]}
    runs = expand("results/{{table}}/dga_{s}_seed{seed}.parquet", s=dga["strategies"], seed=dga["seeds"])
    want = [r.format(table="domain_weights") for r in runs]
    want += expand("results/metrics/dga/{s}/seed{seed}.parquet", s=dga["strategies"], seed=dga["seeds"])
    assert ws.dga_tables(dga) == [*want, "results/scores/dga_alignment.parquet"]


def test_canon_sorts_keys_at_every_depth():
    assert list(ws.canon({"b": 1, "a": {"d": [{"z": 0, "y": 1}], "c": 2}})) == ["a", "b"]
    assert ws.canon({"b": {"y": 1, "x": 2}})["b"] == {"x": 2, "y": 1}
    assert list(ws.canon({"a": [{"z": 0, "y": 1}]})["a"][0]) == ["y", "z"]
    assert ws.without({"seeds": 3, "lr": 0.1}, "seeds") == {"lr": 0.1}


def test_feature_refusals_name_the_field():
    cfg = {"features": {"sets": {"grads": {"seeds": [1, 0], "epochs": [2, 4]}}}, "proxy": {"checkpoints": [2, 4]}}
    assert ws.features_for(cfg, "grads", "r") == [f"r/features/grads/seed{s}-epoch{e}-{sp}/index.json"
                                                  for s in (1, 0) for e in (2, 4) for sp in ("train", "val")]
    # a policy reads its set's first seed, last checkpoint
    assert ws.feature_index(cfg, "grads") == "results/features/grads/seed1-epoch4-train/index.json"
    with pytest.raises(ConfigError) as err:
        ws.features_for(cfg, "nope")
    assert err.value.field == "features" and "grads" in err.value.fix
    with pytest.raises(ConfigError) as err:
        ws.resolve_feature_policy({}, {"policy": "kcenter"}, "results")
    assert err.value.field == "selection.policies.*.features"


def test_refusing_hands_the_error_to_fail_and_shard_inputs():
    calls = []
    ws.refusing(lambda *a: calls.append(a), ws.features_for, {}, "x")
    assert calls == [("names feature set 'x', which does not exist", "features",
                      "use one of:  (in a features: sets: section)")]
    wc = SimpleNamespace(root="results", ckpt="seed2-epoch7")
    assert ws.shard_inputs(wc)["checkpoint"] == "results/proxy/seed2/epoch7.pt"
    assert "checkpoint" not in ws.shard_inputs(SimpleNamespace(root="results", ckpt="hf"))


CURES = {"budget": {"iterations": 7, "checkpoint_every": 3}, "runs": {"vade": {}, "uniform_all": {}},
         "seeds": [2, 0], "policy": {"kind": "toy"}}
def test_cures_paths_match_expand():
    assert ws.cures_iterations(CURES) == [3, 6, 7]  # every third, and the last
    assert ws.cures_iterations({"budget": {"iterations": 4, "checkpoint_every": 2}}) == [2, 4]
    assert ws.cures_tables(CURES, "metrics") == expand("results/metrics/cures/{run}__seed{seed}.parquet",
                                                       run=CURES["runs"], seed=CURES["seeds"])
    assert ws.cures_tables(CURES, "prompt_stats")[1] == "results/prompt_stats/vade__seed0.parquet"
    assert ws.cures_model_input(CURES) == {}  # only an hf policy reads a model file


def test_instruction_data_names_and_models():
    run = {"data": {"source": "instruct"},
           "selection": {"fractions": [0.05], "policies": {"less_top": {"policy": "top", "score": "less"},
                                                           "random": {"policy": "random"},
                                                           "alone": {"policy": "target"}}}}
    # the target-alone baseline is one selection whatever the fractions, kept share 0
    assert ws.selection_names(run) == ["less_top_keep5", "random_keep5", "alone_keep0", "full_keep100"]
    assert ws.selection_info("alone_keep0") == {"method": "alone", "fraction": 0.0}
    assert ws.lm_data(run) and not ws.lm_data({"data": {"source": "files"}})
    tiny = {"name": "causal_lm", "tiny": {"seed": 0}, "lora": {"r": 4}}
    cfg = ws.resolve_lm_models({"proxy": {"model": dict(tiny)}, "training": {"model": dict(tiny)}})
    assert cfg["proxy"]["model"]["path"] == cfg["training"]["model"]["path"] == ws.TINY_LM_DIR
    assert cfg["training"]["model"]["tiny"] == {"seed": 0}  # kept: changing it reruns what used the model
    assert ws.lm_model_path(tiny, "training.model") == ws.TINY_LM_DIR
    assert ws.select_inputs({"policy": "top", "score": "less"}, "results") == {
        "examples": "results/examples/examples.parquet", "meta": "results/examples/meta.json",
        "scores": "results/scores/less.parquet"}
