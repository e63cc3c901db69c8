"""The base model of an instruct run on its own test split, before any fine-tuning: the zero-shot row the report's
selections are measured against.

It evaluates exactly as ``instruct_finetune`` does (same examples table, same LoRA wrapping, whose B matrices start
at zero so the model is the base model, same greedy decoding budget: the longest test completion + 1 tokens), and
prints the test loss per completion token, the exact match and the first answers.

    python benchmarks/instruct_zero_shot.py runs/less --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import torch

from datasel.config import check_config, load_config
from datasel.instruct.data import encode_split
from datasel.instruct.model import load_lm
from datasel.instruct.train import evaluate
from datasel.runtime import pick_device, seed_everything
from datasel.workflow_support import INSTRUCT_DIR, ins_model_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run folder (its config.yaml and results/instruct/examples.parquet)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = check_config(load_config([args.run / "config.yaml"]), ROOT / "workflow" / "schemas")["instruct"]
    table = pl.read_parquet(args.run / INSTRUCT_DIR / "examples.parquet")
    test = table.filter(pl.col("split") == "test").sort("example_id")
    seed_everything(0)
    start = time.perf_counter()
    policy = load_lm(ins_model_dir(cfg), cfg["model"]["lora"], pick_device(cfg["device"]), cfg["model"]["dtype"])
    _, enc = encode_split(test, "test", policy.tok, int(cfg["data"]["max_length"]))
    comps = test.get_column("completion").to_list()
    longest = max(len(policy.tok(c, add_special_tokens=False)["input_ids"]) for c in comps) + 1
    policy.max_new_tokens = int(cfg["eval"].get("max_new_tokens") or longest)
    m = evaluate(policy, enc, test.get_column("prompt").to_list(), comps, cfg["eval"])
    print(f"base model, {m['examples']} test rows: loss/token {m['loss_per_token']:.4f}, exact match "
          f"{m['exact_match']:.3f} ({time.perf_counter() - start:.0f} s)")
    for p, o, c in list(zip(test.get_column("prompt"), m["outputs"], comps))[:4]:
        print(f"  {p.splitlines()[0]!r} -> {o!r} (expected {c!r})")
    print(json.dumps({"loss_per_token": m["loss_per_token"], "exact_match": m["exact_match"],
                      "examples": m["examples"]}))


if __name__ == "__main__":
    main()
