"""`snakemake --profile gpu` typed at the repository root finds the profile and plans the default run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize("profile", ["gpu", "slurm"])
def test_profile_resolves_at_repo_root(tmp_path, profile):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for rel in files:
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            dst.write_bytes(src.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", profile, "-n"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "train" in out and "proxy" in out
    if profile == "gpu":
        assert "gpu=1" in out.replace(" ", "") or "gpu: 1" in out


def test_slurm_profile_names_no_partition_and_no_rule():
    """What a cluster it has never seen needs: the account and partition keys left to fill (empty: none / the
    cluster's default), job states from squeue (sacct fails where there is no accounting), no per-rule list."""
    import yaml

    prof = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert prof["default-resources"] == {"slurm_account": "", "slurm_partition": ""}
    assert prof["slurm-status-command"] == "squeue"
    assert "set-resources" not in prof and "set-threads" not in prof


def _dry_run_resources(tmp_path, compute: dict, *args: str, base: dict | None = None) -> dict[str, str]:
    """rule -> its resources line in `snakemake -n` on the tiny config (or `base`) with this compute section."""
    import re

    from conftest import TINY, snakemake, write_config

    write_config(tmp_path, {**(base or TINY), "compute": compute})
    out = snakemake(tmp_path, "-n", "--forceall", *args).stdout
    found = {}
    for m in re.finditer(r"rule (\w+):\n(?:\s+\w+:.*\n)*?\s+(?:threads: (\d+)\n\s+)?resources: (.*)\n", out):
        found.setdefault(m.group(1), f"threads={m.group(2) or 1}, {m.group(3)}")
    return found


def test_job_resources_come_from_the_config(tmp_path):
    jobs = {"default": {"runtime": 7, "mem_mb": 123}, "proxy": {"runtime": 9}, "gpu": {"gpu_model": "a100"}}
    res = _dry_run_resources(tmp_path / "gpu", {"threads": 2, "jobs": jobs})
    assert {"prepare", "proxy", "score", "select", "train"} <= set(res), res
    assert "runtime=9" in res["proxy"] and "mem_mb=123" in res["proxy"] and "gpu=1" in res["proxy"]
    assert "gpu_model=a100" in res["proxy"] and "gpu=1" in res["train"] and "gpu=1" in res["score"]
    for rule in ("prepare", "select"):
        assert "runtime=7" in res[rule] and "gpu" not in res[rule], res[rule]
    assert all(r.startswith("threads=2,") for name, r in res.items() if name not in ("all", "report", "catalog")), res
    # the switch for a cluster without GPUs: no job asks for one, the GPU type goes with it
    off = _dry_run_resources(tmp_path / "cpu", {"device": "cpu", "jobs": jobs})
    assert not any("gpu" in r for r in off.values()), off
    assert "runtime=9" in off["proxy"]


def _local_rules(work) -> set[str]:
    """The rules a cluster run of work/config.yaml keeps on the submitting host (`localrules:`). A dry run does not
    print this (it shows every job as `rule`), so the workflow is parsed in this process and asked."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf = api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[work / "config.yaml"]),
                              snakefile=ROOT / "Snakefile", workdir=work)
            workflow = wf._workflow  # the parsed workflow: Snakemake's API has no public accessor for localrules
            return {rule.name for rule in workflow.rules if rule.name in workflow._localrules}
    finally:
        os.chdir(cwd)


def test_job_resources_refuse_an_unknown_rule(tmp_path):
    from conftest import TINY, snakemake, write_config

    write_config(tmp_path, {**TINY, "compute": {"jobs": {"proxxy": {"runtime": 5}}}})
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "compute.jobs.proxxy" in out and "did you mean 'proxy'" in out, out[-2000:]


def test_datasel_run_finds_the_repository_profiles(tmp_path, monkeypatch):
    """`datasel run DIR --profile slurm` from any folder: Snakemake itself looks the name up only here and in the
    user's config folders. A folder of that name here still wins (Snakemake's own rule)."""
    from datasel.runfolder import repo_profiles

    monkeypatch.chdir(tmp_path)
    ours = str(ROOT / "profiles" / "slurm")
    assert repo_profiles(["--profile", "slurm", "-n"], ROOT) == ["--profile", ours, "-n"]
    assert repo_profiles(["--profile=gpu"], ROOT) == [f"--profile={ROOT / 'profiles' / 'gpu'}"]
    assert repo_profiles(["--profile", "elsewhere"], ROOT) == ["--profile", "elsewhere"]
    (tmp_path / "slurm").mkdir()
    assert repo_profiles(["--profile", "slurm"], ROOT) == ["--profile", "slurm"]


def test_gpu_request_gres_asks_slurm_for_a_generic_resource(tmp_path):
    """compute.gpu_request gres: a cluster run's GPU jobs ask `--gres=gpu:<model>:1` (not --gpus); a local run of the
    same config still counts gpu=1, which `--resources gpu=N` and the device claim go by."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    compute = {"gpu_request": "gres", "jobs": {"gpu": {"gpu_model": "a100"}}}
    cluster = _dry_run_resources(tmp_path / "cluster", compute, "--executor", "slurm", "--jobs", "4")
    assert "gres=gpu:a100:1" in cluster["proxy"] and "gres=gpu:a100:1" in cluster["train"], cluster
    assert "gpu=" not in cluster["proxy"] and "gpu_model" not in cluster["proxy"]
    assert "gres" not in cluster["prepare"]
    local = _dry_run_resources(tmp_path / "local", compute)
    assert "gpu=1" in local["proxy"] and "gres" not in local["proxy"], local

    class Job:  # what the executor reads of a job
        def __init__(self, **res):
            self.resources = type("Res", (dict,), {"__getattr__": dict.__getitem__})(res)

    assert set_gres_string(Job(gres="gpu:a100:1")).split() == ["--gres=gpu:a100:1"]
    assert set_gres_string(Job(gpu=1, gpu_model="a100")).split() == ["--gpus=a100:1"]  # the default, gpus
