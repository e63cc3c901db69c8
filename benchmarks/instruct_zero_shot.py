"""The base model of an instruction-data run on its own test split, before any fine-tuning: the zero-shot row the
report's selections are measured against.

It evaluates exactly as a target run does (:func:`datasel.training.lm.evaluate`: the same examples table, the same
LoRA wrapping, whose B matrices start at zero so the model is the base model, the same greedy decoding budget), and
prints the test loss per completion token, the exact match and the first answers. Last line: one JSON object.

    python benchmarks/instruct_zero_shot.py runs/less --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import polars as pl
import torch

from datasel.config import check_config, load_config
from datasel.training.lm import evaluate, lm_policy, lm_rows
from datasel.workflow_support import resolve_lm_models

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run folder (its config.yaml and results/examples/)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(args.run)  # the config's paths (the tiny model's folder) are the run folder's
    cfg = resolve_lm_models(check_config(load_config([Path("config.yaml")]), ROOT / "workflow" / "schemas"))
    table = pl.read_parquet("results/examples/examples.parquet")
    meta = json.loads(Path("results/examples/meta.json").read_text())
    test = table.filter(pl.col("split") == "test").sort("example_id")
    start = time.perf_counter()
    model, gen = cfg["training"]["model"], cfg["training"].get("generation") or {}
    policy = lm_policy(model, 0, cfg["compute"]["device"], "training.model")
    comps = test.get_column("completion").to_list()
    longest = max(len(policy.tok(c, add_special_tokens=False)["input_ids"]) for c in comps) + 1
    policy.max_new_tokens = int(gen.get("max_new_tokens") or longest)
    m = evaluate(policy, lm_rows(test, meta, model, policy.tok, "training.model"), test.get_column("prompt").to_list(),
                 comps, int(gen.get("batch_size", 32)))
    print(f"base model, {m['examples']} test rows: loss/token {m['loss_per_token']:.4f}, exact match "
          f"{m['exact_match']:.3f} ({time.perf_counter() - start:.0f} s)")
    for p, o, c in list(zip(test.get_column("prompt"), m["outputs"], comps))[:4]:
        print(f"  {p.splitlines()[0]!r} -> {o!r} (expected {c!r})")
    print(json.dumps({"loss_per_token": m["loss_per_token"], "exact_match": m["exact_match"],
                      "examples": m["examples"]}))


if __name__ == "__main__":
    main()
