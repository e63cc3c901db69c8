"""One GPU per job (datasel.devices) and compute.precision (datasel.runtime), on CPU.

There is no GPU here: DATASEL_FAKE_GPUS=N stands for the machine's count. The claim itself (flock, the
CUDA_VISIBLE_DEVICES it sets) is the same code a GPU machine runs; only the torch device behind it differs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY, snakemake, write_config
from torch import nn

from datasel import devices, runtime
from datasel.errors import ConfigError

HOLDER = """
import sys, time
from pathlib import Path
from datasel.devices import claim_gpu
claim = claim_gpu(sys.argv[2].split(","), Path(sys.argv[1]))
print(claim.device, claim.slot, flush=True)
time.sleep(600)
"""


def test_claims_are_distinct_shared_past_the_count_and_released_by_sigkill(tmp_path):
    lock_dir = tmp_path / devices.LOCK_DIR
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), "0,1"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().split() == ["0", "0"]
        second = devices.claim_gpu(["0", "1"], lock_dir)
        assert (second.device, second.slot) == ("1", 0)
        # a third job on two devices shares one (slot 1) instead of waiting or failing
        third = devices.claim_gpu(["0", "1"], lock_dir)
        assert (third.device, third.slot) == ("0", 1)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        # the kernel dropped the dead process's lock: device 0, slot 0 is free again (the file itself stays)
        assert (lock_dir / "gpu0.lock").exists()
        again = devices.claim_gpu(["0", "1"], lock_dir)
        assert (again.device, again.slot) == ("0", 0)
    finally:
        holder.kill()
        holder.wait()


def test_claim_for_job_sets_the_device_and_keeps_a_preset_one(tmp_path):
    # no pool from a Snakemake process: the job looks at the machine (here the fake count)
    env = {devices.FAKE_ENV: "2"}
    note = devices.claim_for_job(1, env, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID", note
    assert "claimed device 0 of 0,1" in note

    # Slurm (or a user) set the device for this job: kept, nothing claimed
    env = {devices.FAKE_ENV: "2", "CUDA_VISIBLE_DEVICES": "3"}
    assert "kept" in devices.claim_for_job(1, env, tmp_path / "a")
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and not (tmp_path / "a").exists()
    env = {devices.POOL_ENV: "0,1", "CUDA_VISIBLE_DEVICES": "1"}
    assert "kept" in devices.claim_for_job(1, env, tmp_path / "b") and env["CUDA_VISIBLE_DEVICES"] == "1"
    # inside a Slurm job that was given no GPU: the node's devices are not ours to hand out
    env = {devices.FAKE_ENV: "2", "SLURM_JOB_ID": "7"}
    assert "nothing claimed" in devices.claim_for_job(1, env, tmp_path / "c")
    assert "CUDA_VISIBLE_DEVICES" not in env and not (tmp_path / "c").exists()

    # the run was started with CUDA_VISIBLE_DEVICES=2,3: its jobs inherit it unchanged and spread over those two
    run = tmp_path / "run"
    first, second = {devices.POOL_ENV: "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}, {devices.POOL_ENV: "2,3",
                                                                               "CUDA_VISIBLE_DEVICES": "2,3"}
    devices.claim_for_job(1, first, run)
    devices.claim_for_job(1, second, run)
    assert (first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]) == ("2", "3")
    assert sorted(p.name for p in (run / devices.LOCK_DIR).iterdir()) == ["gpu2.lock", "gpu3.lock"]

    # an empty pool (CUDA_VISIBLE_DEVICES="" for the run): no GPU, no claim
    env = {devices.POOL_ENV: "", "CUDA_VISIBLE_DEVICES": ""}
    assert "none visible" in devices.claim_for_job(1, env, tmp_path / "d") and env["CUDA_VISIBLE_DEVICES"] == ""


def test_a_cpu_job_claims_nothing(tmp_path):
    """compute.device: cpu gives GPU rules no gpu resource (rules/common.smk); a job without one claims nothing."""
    from datasel.snakemake_entry import job_gpus

    assert job_gpus(SimpleNamespace(resources=SimpleNamespace(gpu=1))) == 1
    assert job_gpus(SimpleNamespace(resources=SimpleNamespace(mem_mb=10))) == 0
    assert job_gpus(SimpleNamespace(resources=SimpleNamespace(gres="gpu:a100:1"))) == 1  # gpu_request gres
    assert job_gpus(SimpleNamespace(resources=SimpleNamespace(gres="gpu"))) == 1
    assert job_gpus(SimpleNamespace(resources=SimpleNamespace(gres="tmpdisk:100"))) == 0
    env = {devices.FAKE_ENV: "2"}
    assert "none asked for" in devices.claim_for_job(0, env, tmp_path)
    assert "CUDA_VISIBLE_DEVICES" not in env and not (tmp_path / devices.LOCK_DIR).exists()


def test_visible_gpus_from_the_environment_and_nvidia_smi(monkeypatch):
    assert devices.parse_visible("0, 2,-1,3") == ["0", "2"]  # CUDA stops at the first invalid entry
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,3"}) == ["GPU-1a2b", "3"]
    assert devices.visible_gpus({devices.FAKE_ENV: "3", "CUDA_VISIBLE_DEVICES": "5"}) == ["0", "1", "2"]
    with pytest.raises(ConfigError, match=devices.FAKE_ENV):
        devices.visible_gpus({devices.FAKE_ENV: "two"})
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
               "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)\n"
               "  MIG 3g.20gb     Device  0: (UUID: MIG-cccc-1111)\n"
               "  MIG 3g.20gb     Device  1: (UUID: MIG-dddd-2222)\n"
               "GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-eeee)\n")
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=listing))
    # a GPU split into MIG instances is used through its instances (CUDA takes one MIG device per process)
    assert devices.visible_gpus({}) == ["0", "MIG-cccc-1111", "MIG-dddd-2222", "2"]


def test_gpu_jobs_of_a_workflow_claim_distinct_devices(tmp_path, monkeypatch):
    """`--profile gpu` with two (fake) GPUs: the two proxy jobs run at once, each on its own device, and log it."""
    monkeypatch.setenv(devices.FAKE_ENV, "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(devices.POOL_ENV, raising=False)
    # the two jobs overlap from their claims (taken before torch is imported) to their ends; more epochs than TINY's
    # widen that window well past any skew between their starts
    write_config(tmp_path, {**TINY, "proxy": {**TINY["proxy"], "epochs": 12}})
    targets = [f"results/proxy/seed{s}/epochs.parquet" for s in (0, 1)]
    proc = snakemake(tmp_path, "--profile", str(ROOT / "profiles" / "gpu"), *targets)
    assert "2 GPU(s) visible (0,1); at most 2 GPU job(s) at once" in proc.stdout + proc.stderr
    claimed = {}
    for seed in (0, 1):
        text = (tmp_path / "logs" / "results" / "proxy" / f"seed{seed}.log").read_text()
        m = re.search(r"GPU: claimed device (\d) of 0,1 \(CUDA_VISIBLE_DEVICES=\1\)", text)
        assert m, text
        claimed[seed] = m.group(1)
        # no CUDA here: the job ran on the CPU, in fp32, and says so
        assert "device: cpu" in text and "precision: fp32 for training on cpu (compute.precision auto)" in text
    assert sorted(claimed.values()) == ["0", "1"], claimed
    assert sorted(p.name for p in (tmp_path / devices.LOCK_DIR).iterdir()) == ["gpu0.lock", "gpu1.lock"]
    # the prepare step asks for no GPU: nothing claimed
    assert "GPU: none asked for" in (tmp_path / "logs" / "results" / "prepare.log").read_text()
    # what benchmarks/gpu_check.sh reports per job, read back from these logs
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import job_lines

    jobs = {j["job"]: j for j in job_lines(tmp_path) if j["rule"] == "proxy"}
    assert sorted(jobs) == ["root=results seed=0", "root=results seed=1"], jobs
    assert {jobs[f"root=results seed={s}"]["gpu"].split()[2] for s in (0, 1)} == {"0", "1"}
    assert all(j["device"] == "cpu" and "fp32 for training on cpu (compute.precision auto)" in j["precision"]
               for j in jobs.values()), jobs


# ---- compute.precision ----

@pytest.fixture
def precision():
    yield runtime.set_precision
    runtime.set_precision("auto")


def test_precision_choice(precision):
    cpu = torch.device("cpu")
    assert runtime.resolve_precision(cpu) == "fp32" and runtime.resolve_precision(cpu, exact=True) == "fp32"
    assert isinstance(runtime.autocast(cpu), contextlib.nullcontext)
    precision("bf16")  # asked for by name: applies on the CPU too, exact work included
    assert runtime.resolve_precision(cpu, exact=True) == "bf16"
    with runtime.autocast(cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="compute.precision"):
        precision("half")


def test_training_runs_in_the_configured_precision(precision):
    """The forward pass of train_classifier runs in compute.precision; the loss and the update stay fp32."""
    from datasel.training.classify import train_classifier

    seen = []
    for choice in ("auto", "bf16"):
        precision(choice)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        model[2].register_forward_hook(lambda _m, _i, out, choice=choice: seen.append((choice, out.dtype)))
        x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
        train_classifier(model, x, y, {"batch_size": 16, "budget": {"unit": "steps", "value": 2}}, seed=0)
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert {d for c, d in seen if c == "auto"} == {torch.float32}
    assert {d for c, d in seen if c == "bf16"} == {torch.bfloat16}


def test_precision_and_gpu_request_are_config_keys(tmp_path):
    import yaml

    from datasel.config import check_config, load_config

    def check(compute):
        path = tmp_path / "user.yaml"
        path.write_text(yaml.safe_dump({**TINY, "compute": compute}))
        return check_config(load_config([path]), ROOT / "workflow" / "schemas")["compute"]

    got = check({})
    assert got["precision"] == "auto" and got["gpu_request"] == "gpus"
    assert check({"precision": "bf16", "gpu_request": "gres"})["precision"] == "bf16"
    with pytest.raises(ConfigError) as info:
        check({"precision": "bf17"})
    assert info.value.field == "compute.precision" and "bf16" in str(info.value)


@pytest.mark.parametrize("projection", ["factored", "dense"])
def test_gradient_features_are_fp32_unless_bf16_is_named(tmp_path, precision, projection, caplog):
    """Gradient features are exact work: auto gives the fp32 bytes, a named bf16 runs them under autocast (close to
    fp32, not equal) on either projection path; neither falls back from its fast path over the rounding."""
    import numpy as np

    from datasel.features.compute import featurize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    feats = {}
    for choice in ("auto", "fp32", "bf16"):
        precision(choice)
        out = tmp_path / choice
        meta = featurize(model, x, y, out, {"projection": projection, "dim": 32}, ids=[str(i) for i in range(64)])
        feats[choice] = np.fromfile(out / "features.f16", dtype=np.float16).reshape(meta["rows"], meta["dim"])
    assert np.array_equal(feats["auto"], feats["fp32"])
    fallbacks = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not fallbacks, fallbacks  # e.g. "layer taps disagree with the per-example loop"
    a, b = feats["fp32"].astype(np.float64), feats["bf16"].astype(np.float64)
    assert not np.array_equal(a, b)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()


def test_gradient_norms_are_fp32_unless_bf16_is_named(precision, caplog):
    """Ghost norms (GraNd) are exact work too: auto equals fp32 bit for bit; a named bf16 stays on the ghost path."""
    from datasel.features.compute import cross_entropy
    from datasel.features.norms import GradNorms

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    got = {}
    for choice in ("auto", "fp32", "bf16"):
        precision(choice)
        norms = GradNorms(model, cross_entropy)
        got[choice] = norms(x, y)
        assert norms.mode == "ghost" and got[choice].dtype == torch.float32
    assert torch.equal(got["auto"], got["fp32"]) and not torch.equal(got["fp32"], got["bf16"])
    assert torch.allclose(got["fp32"], got["bf16"], rtol=3e-2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
