"""CurES on SmolLM2-135M-Instruct: the graded prompt pool's zero-shot spread, and what one GRPO iteration costs.

``--part spread`` samples ``--k`` completions per prompt at the GRPO temperature for ``--per-level`` prompts of each
difficulty level (``source: graded``, chat template, the answer checker of ``datasel.rl.answers``) and prints, per
level, the mean accuracy and the share of prompts with p = 0, 0 < p < 1 and p = 1 (p: the prompt's share of correct
samples). ``--out`` appends one JSON line per prompt (with its completions) so several short runs, e.g. with other
``--seed`` values, can be pooled by ``--table`` files (which scores the stored completions again).

``--part iteration`` times one iteration of each curriculum of ``config/experiments/cures.yaml`` (uniform GRPO and
CurES, LoRA adapters, the config's budget and GRPO settings) from the fresh model, plus the held-out evaluation, in
wall-clock and CPU seconds (on a shared machine the CPU seconds are what a run costs; wall-clock follows the load).

    DATASEL_PROGRESS=0 python benchmarks/cures_pool.py --part spread --per-level 8 --k 4 --out /tmp/spread.jsonl
    python benchmarks/cures_pool.py --table /tmp/spread.jsonl
    DATASEL_PROGRESS=0 python benchmarks/cures_pool.py --part iteration
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

from datasel.rl.answers import check_answer, completion_number
from datasel.rl.evaluate import accuracy, rewards_for
from datasel.rl.loop import new_policy, run_rl
from datasel.rl.prompts import DEFAULT_LEVELS, build_prompt_sets
from datasel.runtime import seed_everything, set_threads

CONFIG = Path(__file__).resolve().parents[1] / "config" / "experiments" / "cures.yaml"


def spread_table(rows: list[dict]) -> str:
    """Per level and overall: prompts, mean accuracy, share with p = 0, 0 < p < 1, p = 1."""
    df = pl.DataFrame([{"level": r["level"], "p": float(np.mean(r["rewards"]))} for r in rows])
    out = ["level   prompts  accuracy  p=0    0<p<1  p=1"]
    levels = list(dict.fromkeys(df["level"].to_list()))
    for name, part in [(lv, df.filter(pl.col("level") == lv)) for lv in levels] + [("all", df)]:
        p = part["p"].to_numpy()
        out.append(f"{name:<7} {len(p):>7}  {p.mean():8.3f}  {np.mean(p == 0):.2f}   {np.mean((p > 0) & (p < 1)):.2f}   "
                   f"{np.mean(p == 1):.2f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["spread", "iteration"])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--per-level", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="rollouts sampled at once")
    ap.add_argument("--out", help="append one JSON line per prompt here (spread)")
    ap.add_argument("--table", nargs="+", help="print the spread table of these --out files and stop")
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(line) for f in args.table for line in Path(f).read_text().splitlines() if line.strip()]
        for r in rows:  # scored again by the current answer reader
            r["rewards"] = [float(check_answer(c, r["answer"])) for c in r["completions"]]
        print(spread_table(rows))
        return
    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    cfg = yaml.safe_load(Path(args.config).read_text())["cures"]
    pcfg, grpo = dict(cfg["prompts"]), dict(cfg.get("grpo", {}))
    temperature = float(grpo.get("temperature", 1.0))
    seed_everything(args.seed)
    if args.part == "spread":
        if pcfg.get("source") != "graded":
            ap.error(f"--part spread needs cures.prompts.source: graded in {args.config}")
        levels = pcfg.get("graded", {}).get("levels", DEFAULT_LEVELS)
        n = args.per_level * len(levels)
        table = build_prompt_sets({**pcfg, "sizes": {"warmstart": 1, "pool": n, "heldout": 1}}, args.seed)
        pool = table.filter(pl.col("split") == "pool")
        t0 = time.perf_counter()
        policy = new_policy(table, dict(cfg["policy"]), torch.device("cpu"))
        load_s = time.perf_counter() - t0
        qs, ans = pool["question"].to_list(), pool["answer"].to_list()
        order = np.repeat(np.arange(len(qs)), args.k)
        gen = torch.Generator().manual_seed(args.seed)
        texts: list[str] = []
        tokens, t0 = 0, time.perf_counter()
        for s in range(0, len(order), args.batch):
            chunk = order[s:s + args.batch]
            ro = policy.sample([qs[i] for i in chunk], temperature, generator=gen)
            texts += ro.texts
            tokens += int(ro.comp.sum())
        sample_s = time.perf_counter() - t0
        rewards = rewards_for(texts, [ans[i] for i in order]).numpy()
        rows = [{"level": lv, "question": q, "answer": a, "rewards": rewards[order == i].tolist(),
                 "completions": [texts[j] for j in np.nonzero(order == i)[0]],
                 "extracted": [completion_number(texts[j]) for j in np.nonzero(order == i)[0]]}
                for i, (lv, q, a) in enumerate(zip(pool["level"], qs, ans))]
        if args.out:
            with open(args.out, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"SmolLM2 zero-shot, temperature {temperature}, k = {args.k}, max_new_tokens "
              f"{policy.max_new_tokens}, seed {args.seed}: load {load_s:.0f} s, {len(order)} rollouts, {tokens} tokens "
              f"in {sample_s:.0f} s ({tokens / sample_s:.1f} tokens/s, batch {args.batch}, {args.threads} thread(s))")
        print(spread_table(rows))
        return
    # one iteration per curriculum, from the fresh model, as the experiment runs it
    table = build_prompt_sets(pcfg, int(pcfg.get("seed", 0)))
    runs = cfg["runs"]
    held = int(cfg.get("eval", {}).get("heldout_size") or table.filter(pl.col("split") == "heldout").height)
    print(f"policy {cfg['policy']}, budget {cfg['budget']['rollouts_per_iteration']} rollouts/iteration, "
          f"held-out {held}, {args.threads} thread(s)")
    heldout = table.filter(pl.col("split") == "heldout")
    for k, run in enumerate(runs):
        seed_everything(args.seed)
        t0 = time.perf_counter()
        policy = new_policy(table, dict(cfg["policy"]), torch.device("cpu"))
        load_s = time.perf_counter() - t0
        if k == 0:  # every run starts from the same model: its held-out evaluation is timed once
            t0, c0 = time.perf_counter(), time.process_time()
            acc = accuracy(policy, heldout["question"].to_list()[:held], heldout["answer"].to_list()[:held])
            print(f"  load {load_s:.0f} s; held-out evaluation (greedy, {held} prompts) {time.perf_counter() - t0:.0f} s "
                  f"(CPU {time.process_time() - c0:.0f} s), accuracy {acc:.3f}")
        one = {**cfg, "budget": {**cfg["budget"], "iterations": 1}, "eval": {"every": 10**6, "heldout_size": 1}}
        t0, c0 = time.perf_counter(), time.process_time()
        metrics, _ = run_rl(policy, table, one, run, args.seed)
        it_s, it_cpu = time.perf_counter() - t0, time.process_time() - c0
        info = {r["metric"]: round(r["value"], 3) for r in metrics.filter(pl.col("iteration") == 1).iter_rows(named=True)}
        print(f"  {run}: one iteration {it_s:.0f} s, CPU {it_cpu:.0f} s (with 2 greedy evaluations of 1 prompt); {info}")


if __name__ == "__main__":
    main()
