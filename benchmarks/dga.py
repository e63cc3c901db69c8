"""DGA against uniform, natural, specific-only and importance-sampling mixtures: final specific-set loss.

Runs, on CPU, with the settings of config/experiments/dga_mnist1d.yaml and dga_text_tiny.yaml:
  1. MNIST-1D domains (6 generator settings; target = held-out setting, 100 examples), every strategy × seeds;
  2. stdlib text domains with a char-level TinyGPT (target = `>>>` sessions, 40 chunks), every strategy × seeds;
  3. regime "small generic pool": MNIST-1D with few examples per domain (importance sampling overfits);
  4. regime "tiny specific set": MNIST-1D with 10 specific examples;
  5. many domains: k-means clusters of the MNIST-1D pool reweighted through N basis distributions;
  6. sensitivity of DGA's final loss to η and β (MNIST-1D).
Prints readable tables; the last line is one JSON object with every figure.

    DATASEL_PROGRESS=0 python benchmarks/dga.py                 # the full run (859 s measured on 2 shared, busy cores)
    DATASEL_PROGRESS=0 python benchmarks/dga.py --quick         # fewer steps / smaller pools, for a smoke check
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from datasel.data.domains import mnist1d_domains, stdlib_text_domains
from datasel.mixing.dga import train_mixture
from datasel.mixing.steps import prepare_task, task_basis
from datasel.runtime import set_threads

ROOT = Path(__file__).resolve().parents[1]
STRATS = ["dga", "uniform", "natural", "specific_only", "importance"]


def exp_cfg(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / "experiments" / name).read_text())["dga"]


def run(df, meta, cfg, strategies, seeds) -> dict[str, dict[str, float]]:
    out = {}
    for s in strategies:
        losses, accs, mins, secs = [], [], [], []
        for seed in seeds:
            t = time.time()
            task = prepare_task(df, meta, cfg, seed=int(cfg.get("domain_seed", 0)))
            res = train_mixture(task, cfg, s, seed, task_basis(task, cfg, seed) if s == "dga" else None)
            secs.append(time.time() - t)
            losses.append(res.final["loss"])
            accs.append(res.final["accuracy"])
            mins.append(min(c[1] for c in res.curve))
            if s in ("dga", "importance") and seed == seeds[0]:
                top = sorted(zip(res.weights[-1][1], res.domains), reverse=True)[:3]
                out.setdefault("_weights", {})[s] = {d: round(float(w), 3) for w, d in top}
        out[s] = {"loss_mean": float(np.mean(losses)), "loss_std": float(np.std(losses)),
                  "acc_mean": float(np.mean(accs)), "min_loss_mean": float(np.mean(mins)),
                  "sec_per_run": float(np.mean(secs)), "losses": [round(x, 4) for x in losses]}
    return out


def show(title: str, res: dict[str, Any]) -> None:
    print(f"\n== {title}")
    print(f"{'strategy':<14}{'final loss':>18}{'min loss':>10}{'accuracy':>10}{'s/run':>8}")
    for s, r in res.items():
        if s.startswith("_"):
            continue
        print(f"{s:<14}{r['loss_mean']:>10.4f} ± {r['loss_std']:<6.4f}{r['min_loss_mean']:>10.4f}"
              f"{r['acc_mean']:>10.3f}{r['sec_per_run']:>8.1f}")
    if "_weights" in res:
        print("  final top weights:", res["_weights"])


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    d = res["dga"]["loss_mean"]
    others = {s: r["loss_mean"] for s, r in res.items() if s not in ("dga",) and not s.startswith("_")}
    return {"dga_beats_importance": bool(d < res["importance"]["loss_mean"]) if "importance" in res else None,
            "dga_beats_all": bool(d < min(others.values())), "best": min({**others, "dga": d}.items(),
                                                                          key=lambda kv: kv[1])[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps and smaller pools (smoke check)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_threads(1)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    t0 = time.time()
    figures: dict[str, Any] = {"seeds": len(seeds), "quick": args.quick}

    # 1. MNIST-1D domains
    mcfg = exp_cfg("dga_mnist1d.yaml")
    if args.quick:
        mcfg["data"]["per_domain"] = 400
        mcfg["train"]["steps"] = 200
    mcfg["device"] = "cpu"
    df, meta = mnist1d_domains(mcfg["data"])
    m = run(df, meta, mcfg, STRATS, seeds)
    show(f"MNIST-1D domains ({mcfg['data']['per_domain']}/domain, {mcfg['data']['n_specific']} specific, "
         f"{mcfg['train']['steps']} steps)", m)
    figures["mnist1d"] = {**m, "verdict": verdict(m)}

    # 2. stdlib text domains, TinyGPT
    if not args.skip_text:
        tcfg = exp_cfg("dga_text_tiny.yaml")
        if args.quick:
            tcfg["data"]["per_domain"] = 150
            tcfg["train"]["steps"] = 80
        tcfg["device"] = "cpu"
        tdf, tmeta = stdlib_text_domains(tcfg["data"])
        t = run(tdf, tmeta, tcfg, STRATS, seeds)
        show(f"stdlib text domains, TinyGPT ({tcfg['data']['per_domain']} chunks/domain, "
             f"{tcfg['data']['n_specific']} specific chunks, {tcfg['train']['steps']} steps)", t)
        figures["text"] = {**t, "verdict": verdict(t)}

    # 3. regime: small generic pool
    small = copy.deepcopy(mcfg)
    small["data"]["per_domain"] = 60 if args.quick else 100
    sdf, smeta = mnist1d_domains(small["data"])
    r1 = run(sdf, smeta, small, ["dga", "importance", "uniform"], seeds)
    show(f"regime: small generic pool ({small['data']['per_domain']}/domain)", r1)
    figures["regime_small_pool"] = {**r1, "verdict": verdict(r1), "per_domain": small["data"]["per_domain"]}

    # 4. regime: tiny specific set
    tiny = copy.deepcopy(mcfg)
    tiny["data"]["n_specific"] = 10
    tdf2, tmeta2 = mnist1d_domains(tiny["data"])
    r2 = run(tdf2, tmeta2, tiny, ["dga", "importance", "uniform", "specific_only"], seeds)
    show("regime: tiny specific set (10 examples)", r2)
    figures["regime_tiny_specific"] = {**r2, "verdict": verdict(r2), "n_specific": 10}

    # 5. many domains: k-means clusters + basis distributions
    many = copy.deepcopy(mcfg)
    k = 60 if args.quick else 200
    many["domains"] = {"method": "kmeans", "k": k, "on": "inputs"}
    many["basis"] = {"kind": "groups", "n_basis": 8}
    r3 = run(df, meta, many, ["dga", "uniform", "importance"], seeds)
    many_id = copy.deepcopy(many)
    many_id["basis"] = {"kind": "identity"}
    r3["dga_per_cluster"] = run(df, meta, many_id, ["dga"], seeds[:1])["dga"]
    show(f"many domains: k-means k={k} over the pool, DGA on 8 basis distributions (groups); "
         f"dga_per_cluster = {k} arms, 1 seed", r3)
    figures["many_domains"] = {**r3, "k": k, "n_basis": 8}

    # 6. sensitivity to eta and beta (one seed)
    sens = {}
    for eta in (0.25, 1.0, 4.0):
        for beta in (0.2, 0.5, 1.0):
            c = copy.deepcopy(mcfg)
            c["dga"] = {**c["dga"], "eta": eta, "beta": beta}
            sens[f"eta={eta},beta={beta}"] = round(run(df, meta, c, ["dga"], seeds[:1])["dga"]["loss_mean"], 4)
    print("\n== DGA sensitivity (MNIST-1D, seed 0): final specific loss")
    print("eta \\ beta " + "".join(f"{b:>9}" for b in (0.2, 0.5, 1.0)))
    for eta in (0.25, 1.0, 4.0):
        print(f"{eta:<11}" + "".join(f"{sens[f'eta={eta},beta={b}']:>9.4f}" for b in (0.2, 0.5, 1.0)))
    figures["sensitivity"] = sens
    figures["seconds"] = round(time.time() - t0, 1)
    print(f"\ntotal {figures['seconds']} s")
    print(json.dumps(figures, default=float))


if __name__ == "__main__":
    main()
