"""GraNd's per-sample gradients: vmap against a per-example Python loop, on the default proxy model.

    python benchmarks/grand.py            # 1,024 examples of MNIST-1D shape, 1-D CNN (32 channels)

Prints the max relative error between the two (float64) and examples/s of each (float32); last line JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("DATASEL_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasel.features.grads import per_sample_grad_norms, per_sample_grads
from datasel.models import build_model

META = {"input_dim": 40, "num_classes": 10}


def loop_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-example autograd loop (the library's fallback for modules vmap cannot trace)."""
    return per_sample_grads(model, x, y, F.cross_entropy, chunk_size=x.shape[0], mode="loop")


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(n: int = 1024) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model({"name": "cnn1d", "channels": 32}, META)
    x, y = torch.randn(n, 40), torch.randint(0, 10, (n,))
    m64, x64 = build_model({"name": "cnn1d", "channels": 32}, META).double(), x[:256].double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    slow = loop_grads(m64, x64, y[:256])
    rel = {mode: ((per_sample_grads(m64, x64, y[:256], F.cross_entropy, mode=mode) - slow).norm(dim=1)
                  / slow.norm(dim=1)).max().item() for mode in ("vmap", "layers")}
    t_loop = timed(lambda: loop_grads(model, x, y), repeat=1)
    t = {mode: timed(lambda mode=mode: per_sample_grad_norms(model, x, y, F.cross_entropy, chunk_size=512, mode=mode))
         for mode in ("vmap", "layers")}
    figures = {
        "n": n,
        "params": sum(p.numel() for p in model.parameters()),
        "max_rel_err_float64_vmap": rel["vmap"],
        "max_rel_err_float64_layers": rel["layers"],
        "loop_examples_per_s": n / t_loop,
        "vmap_examples_per_s": n / t["vmap"],
        "layers_examples_per_s": n / t["layers"],
        "speedup_vmap_over_loop": t_loop / t["vmap"],
        "speedup_layers_over_loop": t_loop / t["layers"],
    }
    print(f"max relative error vs the loop (float64, 256 examples): vmap {rel['vmap']:.2e}, layers {rel['layers']:.2e}")
    print(f"per-example loop: {figures['loop_examples_per_s']:,.0f} ex/s; vmap: {figures['vmap_examples_per_s']:,.0f} ex/s "
          f"({figures['speedup_vmap_over_loop']:.1f}x); layers (GraNd's default via mode auto): "
          f"{figures['layers_examples_per_s']:,.0f} ex/s ({figures['speedup_layers_over_loop']:.1f}x)")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
