"""Sizing of config/experiments/dga_text.yaml (DGA on SmolLM2-135M-Instruct + LoRA): time its pieces once, add up.

Builds the config's domain data and task, then times with the config's shapes: one DGA update at the base model
(k + 1 alignment gradients: one per domain, one of the specific set; it also warms the model up; its cosines and
the weights after the step are printed), ``--steps`` training steps (the median counts), and one evaluation
forward of ``batch_size`` rows. The estimate per run is
``t_setup + steps·t_step + evals·⌈n_test / batch_size⌉·t_fwd (+ updates·t_update for DGA)``, summed over
strategies × seeds. Prints wall and CPU seconds of each piece: on a machine shared with other work wall time is
inflated; CPU seconds / threads is what an idle machine would take (if the threads scale).

    DATASEL_PROGRESS=0 python benchmarks/dga_lm_sizing.py [--config config/experiments/dga_text.yaml] \
        [--threads 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __enter__(self) -> Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/experiments/dga_text.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="training steps timed (the median counts)")
    args = ap.parse_args()
    from datasel.data.domains import build_domain_examples
    from datasel.mixing.dga import _flat_grad, alignment_scores, eg_update, evaluate_specific
    from datasel.mixing.steps import prepare_task
    from datasel.mixing.task import token_ce
    from datasel.models import build_model
    from datasel.runtime import set_threads
    from datasel.workflow_support import dga_data_params

    set_threads(args.threads)
    cfg = yaml.safe_load((ROOT / args.config).read_text())["dga"]
    cfg.setdefault("task", {})
    t: dict[str, Clock] = {}
    with Clock() as t["data"]:
        df, meta = build_domain_examples(dga_data_params(cfg))
    with Clock() as t["setup"]:  # what every run repeats: tokenize the task, load the model
        task = prepare_task(df, meta, cfg)
        torch.manual_seed(0)
        model = build_model(cfg["model"], task.meta)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["train"]["lr"]))
    B, ab = int(cfg["train"]["batch_size"]), int(cfg["dga"]["align_batch"])
    k = len(task.domains)
    # one whole DGA update first (it also warms the model up): k + 1 gradients, the cosines, the EG step
    with Clock() as t["dga_update"]:
        g_spe = _flat_grad(model, params, task.spe_x[:ab], task.spe_y[:ab])
        g_arms = [_flat_grad(model, params, x[:ab], y[:ab]) for x, y in zip(task.xs, task.ys)]
        a = alignment_scores(g_arms, g_spe, cfg["dga"].get("normalize", "cosine"))
        w = eg_update(np.full(k, 1 / k), a, float(cfg["dga"]["eta"]), float(cfg["dga"]["beta"]))
    step_clocks = []
    for i in range(args.steps):  # a step's time on a shared machine moves: the median of a few
        x, y = task.xs[i % k][:B], task.ys[i % k][:B]
        with Clock() as c:
            loss = token_ce(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        step_clocks.append(c)
    t["step"] = sorted(step_clocks, key=lambda c: c.cpu)[len(step_clocks) // 2]
    with Clock() as t["eval_fwd"]:
        evaluate_specific(model, task.eval_x[:B], task.eval_y[:B])

    tr = cfg["train"]
    steps, every = int(tr["steps"]), int(tr["eval_every"])
    evals = len(range(0, steps, every)) + 1
    updates = len(range(0, steps, int(cfg["dga"]["update_every"])))
    fwd_batches = evals * math.ceil(len(task.eval_y) / B)
    out: dict[str, object] = {"config": args.config, "threads": args.threads, "domains": k,
                              "tokens_per_step": int((y != -100).sum()),
                              "first_update": {"domains": task.domains, "cosines": [round(float(v), 4) for v in a],
                                               "weights": [round(float(v), 4) for v in w]},
                              "steps_cpu_s": [round(c.cpu, 2) for c in step_clocks],
                              "steps_wall_s": [round(c.wall, 2) for c in step_clocks],
                              "pieces": {n: {"wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2)}
                                         for n, c in t.items()}}
    for kind in ("wall", "cpu"):
        g = {n: getattr(c, kind) for n, c in t.items()}
        base = g["setup"] + steps * g["step"] + fwd_batches * g["eval_fwd"]
        per = {s: base + (updates * g["dga_update"] if s == "dga" else 0) for s in cfg["strategies"]}
        total = g["data"] + len(cfg["seeds"]) * sum(per.values())
        out[f"run_{kind}_s"] = {s: round(v, 1) for s, v in per.items()}
        out[f"total_{kind}_s"] = round(total, 1)
    out["idle_estimate_wall_s"] = round(float(out["total_cpu_s"]) / args.threads, 1)  # type: ignore[arg-type]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
