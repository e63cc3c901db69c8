"""The Python sections of benchmarks/gpu_check.sh (a machine with a CUDA GPU): each prints its lines, then JSON.

    python benchmarks/gpu_check.py config RUN       a shortened default experiment (selection + features) in RUN
    python benchmarks/gpu_check.py report RUN [RC] per job of that run: the device it claimed and ran on, precision
    python benchmarks/gpu_check.py faiss            faiss GPU index against the CPU index on the same rows
    python benchmarks/gpu_check.py lm [ROWS [DIM]]  LESS-style LoRA gradient features of SmolLM2 in bf16 vs fp32

Every section also runs on a machine without a GPU (the GPU parts then say so), so its logic is checked anywhere.
The last line of each section is ``JSON {...}``: gpu_check.sh gathers them into its final line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# the tolerance gpu_check holds the GPU faiss index to (unit rows, float32 GEMM vs the CPU's exact sums)
FAISS_SIM_TOL = 1e-4


def emit(section: str, ok: bool | None, line: str, **data: Any) -> None:
    """The section's result line and its JSON line (ok None: skipped)."""
    status = "ok" if ok else ("skipped" if ok is None else "FAILED")
    print(f"RESULT {section}: {status}: {line}")
    print("JSON " + json.dumps({"section": section, "status": status, "detail": line, **data}))


# ---- config: the default experiment, shortened to fit the check's time ----

def config(run: Path) -> None:
    import yaml

    cfg = {
        "stages": ["selection", "features"],
        "compute": {"threads": 2, "precision": "auto"},
        "data": {"source": "mnist1d", "mnist1d": {"num_samples": 4000, "seed": 3},
                 "noise": {"fraction": 0.2, "seed": 0}},
        "proxy": {"seeds": 2, "model": {"name": "cnn1d"}, "epochs": 4, "checkpoints": [0, 2, 4], "batch_size": 128},
        "scoring": {"el2n": {"method": "el2n", "epoch": 2}, "grand": {"method": "grand", "epoch": 2}},
        "selection": {"fractions": [0.5], "policies": {"random": {"policy": "random"},
                                                        "el2n_offset": {"policy": "offset", "score": "el2n",
                                                                        "offset": 0.1}}},
        "training": {"model": {"name": "cnn1d"}, "seeds": [0, 1], "budget": {"unit": "steps", "value": 400},
                     "batch_size": 128},
        "features": {"shards": 4, "sets": {"grads": {"epochs": [2], "splits": ["train"], "dim": 256}}},
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"config written: {run / 'config.yaml'}")


# ---- report: what each job of a run says in its log ----

STARTED = re.compile(r"step (\w+)([^\n]*?): started")
GPU = re.compile(r"GPU: ([^\n]*)")
DEVICE = re.compile(r"device: ([^\n]*)")
PRECISION = re.compile(r"precision: ([^\n]*)")


def job_lines(run: Path) -> list[dict[str, Any]]:
    """Per job log: rule, wildcards, its GPU claim, the torch device and every precision it ran in."""
    jobs = []
    for log in sorted((run / "logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        m = STARTED.search(text)
        if not m:
            continue
        gpu = GPU.search(text)
        device = DEVICE.search(text)
        jobs.append({"rule": m.group(1), "job": m.group(2).strip(), "log": str(log.relative_to(run)),
                     "gpu": gpu.group(1) if gpu else None, "device": device.group(1) if device else None,
                     "precision": sorted(set(PRECISION.findall(text)))})
    return jobs


def report(run: Path, snakemake_status: int = 0) -> None:
    jobs = job_lines(run)
    gpu_jobs = [j for j in jobs if j["gpu"] and not j["gpu"].startswith("none asked")]
    for j in jobs:
        prec = "; ".join(j["precision"]) or "-"
        print(f"  {j['rule']:<16} {j['job']:<24} {j['device'] or '-':<48} {prec}  [{j['gpu'] or '-'}]")
    claimed = sorted({m.group(1) for j in gpu_jobs if (m := re.search(r"claimed device (\S+)", j["gpu"]))})
    on_cuda = [j for j in gpu_jobs if (j["device"] or "").startswith("cuda")]
    precisions = sorted({p.split(" ")[0] for j in gpu_jobs for p in j["precision"]})
    ok = snakemake_status == 0 and bool(gpu_jobs) and len(on_cuda) == len([j for j in gpu_jobs if j["device"]])
    emit("workflow", ok, f"snakemake exit status {snakemake_status}, {len(jobs)} jobs, {len(gpu_jobs)} GPU jobs, {len(on_cuda)} ran on cuda, devices claimed "
         f"{','.join(claimed) or 'none'}, precisions {','.join(precisions) or 'none'}",
         snakemake_status=snakemake_status, jobs=len(jobs), gpu_jobs=len(gpu_jobs), on_cuda=len(on_cuda), claimed=claimed, precisions=precisions)


# ---- faiss: the GPU index against the CPU index ----

def faiss_check(n: int = 200_000, d: int = 256, q: int = 2_000, k: int = 10) -> None:
    import faiss

    from datasel.features.index import _gpus, build_index, search, unit_rows

    rng = np.random.default_rng(0)
    x = unit_rows(rng.standard_normal((n, d), dtype=np.float32))
    queries = unit_rows(x[rng.choice(n, q, replace=False)] + 0.3 * rng.standard_normal((q, d), dtype=np.float32))
    t0 = time.perf_counter()
    cpu = build_index(x, {"kind": "flat", "device": "cpu"})
    s_cpu, i_cpu = search(cpu, queries, k)
    t_cpu = time.perf_counter() - t0
    gpus = _gpus()
    if gpus == 0:
        emit("faiss", None, f"faiss {faiss.__version__} sees no GPU (a faiss-cpu build?); CPU flat search of {q} "
             f"queries over {n}x{d} in {t_cpu:.2f}s", cpu_s=round(t_cpu, 3))
        return
    t0 = time.perf_counter()
    gpu = build_index(x, {"kind": "flat", "device": "cuda"})
    s_gpu, i_gpu = search(gpu, queries, k)
    t_gpu = time.perf_counter() - t0
    err = float(np.abs(s_gpu - s_cpu).max())
    # an id may differ only between near-equal rows: each id the GPU returns must truly have (recomputed in float64)
    # the similarity the CPU found at that rank
    differs = i_gpu != i_cpu
    exact = np.einsum("qd,qkd->qk", queries.astype(np.float64), x[i_gpu].astype(np.float64))
    bad = int((np.abs(exact - s_cpu) > FAISS_SIM_TOL).sum())
    ok = err <= FAISS_SIM_TOL and bad == 0
    emit("faiss", ok, f"faiss {faiss.__version__} on {gpus} GPU(s): top-{k} of {q} queries over {n}x{d}, max "
         f"similarity error {err:.1e} (tolerance {FAISS_SIM_TOL:g}), {int(differs.sum())} ids differ "
         f"({bad} not near-ties); GPU {t_gpu:.2f}s vs CPU {t_cpu:.2f}s (build + search)",
         max_sim_err=err, ids_differ=int(differs.sum()), bad=bad, gpu_s=round(t_gpu, 3), cpu_s=round(t_cpu, 3))


# ---- lm: LESS-style LoRA gradient features of SmolLM2 ----

def lm_check(rows: int = 32, dim: int = 512) -> None:
    import tempfile

    import torch

    try:  # the causal-LM resolver (packaged smollm2, GGUF dequantized once)
        from datasel.models.causal_lm import load_causal_lm
        from datasel.models.locate import lm_source
    except ImportError as exc:
        emit("lm", None, f"no causal-LM resolver in this datasel ({exc}); LM features not checked")
        return
    import peft

    from datasel.errors import DataselError
    from datasel.features.compute import featurize
    from datasel.runtime import describe_device, pick_device, set_precision
    from datasel.tasks.causal_lm import IGNORE, completion_loss

    device = pick_device("auto")
    texts = [f"Question {i}: what is {i} plus {i + 3}? Answer: {2 * i + 3}." for i in range(rows)]
    feats = {}
    for precision in ("fp32", "bf16"):
        try:
            source = lm_source({"source": "smollm2"}, "model")
            model, tok = load_causal_lm(source, device, "float32" if precision == "fp32" else "bfloat16")
        except DataselError as exc:
            emit("lm", None, f"SmolLM2 not loadable here: {str(exc).splitlines()[0]}")
            return
        torch.manual_seed(0)
        lcfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                               task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lcfg).to(device)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # adapters in fp32 on a bf16 base, as the causal-LM chain trains them
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        enc = tok(texts, return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
        set_precision(precision)  # bf16 by name: per-example gradients are exact work, fp32 under auto
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            meta = featurize(model, {k: v for k, v in enc.items()}, labels, work,
                             {"params": "lora", "projection": "dense", "projector": "rademacher", "dim": dim,
                              "chunk_size": 8}, ids=[str(i) for i in range(rows)], loss_fn=completion_loss,
                             device=device)
            feats[precision] = np.fromfile(Path(work) / "features.f16", dtype=np.float16).reshape(
                meta["rows"], meta["dim"]).astype(np.float32)
        seconds = time.perf_counter() - t0
        del model
    set_precision("auto")
    a, b = feats["fp32"], feats["bf16"]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    ok = bool(np.isfinite(b).all()) and float(cos.min()) > 0.9
    emit("lm", ok, f"SmolLM2-135M LoRA (q_proj, v_proj) gradient features {rows}x{dim} in bf16 on "
         f"{describe_device(device)} in {seconds:.1f}s; cosine to fp32 features min {cos.min():.3f}, mean "
         f"{cos.mean():.3f}", cos_min=float(cos.min()), cos_mean=float(cos.mean()), seconds=round(seconds, 2))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "config":
        config(Path(sys.argv[2]))
    elif what == "report":
        report(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    elif what == "faiss":
        faiss_check()
    elif what == "lm":
        lm_check(*(int(a) for a in sys.argv[2:4]))  # rows, dim: smaller for a try on a CPU
    else:
        sys.exit(__doc__)
