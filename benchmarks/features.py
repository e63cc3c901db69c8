"""Per-example gradient features at the floor: every gradient path and projector, with its quality beside its speed.

Models: the default config's proxy (1-D CNN, 32 channels, D = 8,010) and an MLP 40-1000-1000-10 (D ≈ 1.05M) on
MNIST-1D-shaped inputs, and all-MiniLM-L6-v2 with LoRA adapters (query, value) on stdlib docstrings. For each:

- the floor: one plain batched forward+backward per chunk (the cost of any gradient method's backward pass);
- per-example gradients by each path (loop, vmap, layers);
- features = gradients + projection to k = 512 and 4096 by each projector (dense, sparse, factored, and factored
  with the fitted pca basis, fitted on 2,048 other rows and its fit timed apart), and beside
  each speed the quality: the Pearson correlation of projected with exact inner products over 200 seeded pairs;
- GraNd norms: ghost norms against today's fallback (per-example gradients into a reused buffer, then norms) and
  against the materializing path (a fresh ``(B, D)`` gradient per chunk and a second ``(B, D)`` tensor
  of squares; rebuilt here from today's layer code, so if anything faster than the original), with ghost's
  relative error against a float64 per-example loop.

Timings are medians of interleaved rounds (every function once per round, in turn), so a stretch of load from other
processes hits them all; one thread. Slow cells (dense projection of the 1M MLP) time fewer rows. Then peak RSS of a
streamed featurization of 100k and 1M synthetic examples (children; nothing but the store grows with N).
Last line: one JSON object with every figure and the ratios the goals name (``goals``).

    python benchmarks/features.py                                  # everything (long on a shared CPU)
    python benchmarks/features.py --models cnn --large '' --hf 0   # the default CNN only
    python benchmarks/features.py --device cuda --large ''         # the CUDA path (a GPU machine)
    python benchmarks/features.py --replot run.txt --plot features.png  # speed against quality from a saved run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("DATASEL_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasel.features.compute import DEFAULTS, cross_entropy, featurize
from datasel.features.grads import PerSampleGrads, _call, batch_len, select_params, slice_inputs
from datasel.features.layer_grads import LayerGrads
from datasel.features.norms import GradNorms
from datasel.features.projectors import inner_product_correlation, make_projector
from datasel.models import build_model

CNN_CFG = {"name": "cnn1d", "channels": 32}
MLP_CFG = {"name": "mlp", "hidden": [1000, 1000]}
META = {"input_dim": 40, "num_classes": 10}
PROJECTIONS = ("dense", "sparse", "factored", "pca")  # pca: factored with factor_basis pca (fitted on other rows)
FIT_ROWS = 2048  # rows the pca basis is fitted on (factor_fit_rows), disjoint from the timed and judged rows
KS = (512, 4096)
BAR = {512: 0.95, 4096: 0.97}  # the quality bar: inner-product correlation at each k
SETTINGS: dict[str, Any] = dict(DEFAULTS)  # projector settings timed (the feature defaults unless overridden)
DEVICE = torch.device("cpu")  # --device: where models, inputs and projections live


class SyntheticInputs:
    """N seeded MNIST-1D-shaped rows, generated per slice: memory does not depend on N."""

    def __init__(self, n: int, labels: bool = False) -> None:
        self.n, self.labels = n, labels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sl: slice) -> torch.Tensor:
        start, stop, _ = sl.indices(self.n)
        g = torch.Generator().manual_seed(start)
        if self.labels:
            return torch.randint(0, 10, (stop - start,), generator=g)
        return torch.randn(stop - start, 40, generator=g)


class AsFiledNorms:
    """GraNd norms by the materializing path: a fresh ``(B, D)`` gradient per chunk, then ``g.pow(2)`` (a
    second ``(B, D)`` tensor). It lacks the filed code's extra copy out of per-layer buffers, so it is, if anything,
    faster than the original: a conservative baseline."""

    def __init__(self, model: torch.nn.Module, params: str | list[str]) -> None:
        self.model = model
        self.grads = LayerGrads(model, select_params(model, params), cross_entropy, reuse=False)

    def __call__(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        return self.grads(x, y, lambda inp: _call(self.model, None, inp)).pow(2).sum(1).sqrt()


def _fit_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """FIT_ROWS synthetic rows far from the judged ones (which start at row 0)."""
    start = 10**7
    return SyntheticInputs(start + FIT_ROWS)[start:], SyntheticInputs(start + FIT_ROWS, labels=True)[start:]


def _vector_model(cfg: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, META).eval()


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sync() -> None:
    """Wait for queued GPU work, so a timer reads the work done, not the launches."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def medians(fns: dict[str, tuple[Callable[[], None], int]], rounds: int) -> dict[str, float]:
    """Examples/s of each ``(fn, rows)``: the median over ``rounds`` interleaved rounds, after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, (fn, _) in fns.items():
        t = time.perf_counter()
        fn()  # warm-up: vmap tracing, allocator, layer buffers, cached projection blocks
        _sync()
        _progress(f"warm-up {name}: {time.perf_counter() - t:.2f} s")
    for r in range(rounds):
        for name, (fn, _) in fns.items():
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t)
        _progress(f"round {r + 1}/{rounds} done")
    return {name: fns[name][1] / statistics.median(ts) for name, ts in times.items()}


def _chunks(x: Any, y: torch.Tensor, rows: int, chunk: int) -> list[tuple[Any, torch.Tensor]]:
    return [(slice_inputs(x, s, min(s + chunk, rows)), y[s : min(s + chunk, rows)]) for s in range(0, rows, chunk)]


def make(proj: str, k: int, dim: int, comp: PerSampleGrads, fit: tuple[Any, torch.Tensor], chunk: int,
         seed: int = 0) -> tuple[Any, float]:
    """A projector of the table (``pca`` fitted on ``fit``) and the seconds its fit took."""
    cfg = {**SETTINGS, "projection": "factored" if proj == "pca" else proj, "dim": k, "seed": seed}
    if proj == "pca":
        cfg["factor_basis"] = "pca"
    p = make_projector(cfg, dim, DEVICE, grads=comp)
    t = time.perf_counter()
    if getattr(p, "needs_fit", False):
        p.fit(comp, _chunks(*fit, batch_len(fit[0]), chunk))
        _sync()
    return p, time.perf_counter() - t


def bench(label: str, model: torch.nn.Module, x: Any, y: torch.Tensor, params: str | list[str], *, chunk: int,
          rows: int, loop_rows: int, slow_rows: int, rounds: int, sweep: bool, fit: tuple[Any, torch.Tensor],
          quality_seeds: int = 0) -> dict[str, Any]:
    """Every gradient path, projector and norm path on one model; figures keyed ``<label>_...``."""
    model = model.to(DEVICE)
    x, y = _to_device(x), y.to(DEVICE)
    fit = (_to_device(fit[0]), fit[1].to(DEVICE))
    n = batch_len(x)
    rows = min(rows, n)
    comps = {m: PerSampleGrads(model, cross_entropy, params, m, reuse=True) for m in ("layers", "vmap", "loop")}
    auto = PerSampleGrads(model, cross_entropy, params, "auto")
    exact = torch.cat([auto(xc, yc).clone() for xc, yc in _chunks(x, y, rows, chunk)])  # the quality reference
    dim = auto.dim
    _progress(f"{label}: exact gradients of {rows} rows ({auto.mode})")
    wanted = list(auto.params.values())
    out: dict[str, Any] = {f"{label}_D": dim, f"{label}_auto_mode": auto.mode}

    def over(r: int, fn: Callable[[Any, torch.Tensor], Any]) -> Callable[[], None]:
        batches = _chunks(x, y, r, min(chunk, r))

        def go() -> None:
            for xc, yc in batches:
                fn(xc, yc)
        return go

    def floor(xc: Any, yc: torch.Tensor) -> None:  # one plain batched forward+backward: any method's floor
        torch.autograd.grad(cross_entropy(model(**xc) if isinstance(xc, dict) else model(xc), yc), wanted)

    fns: dict[str, tuple[Callable[[], None], int]] = {"floor": (over(rows, floor), rows)}
    fns["grads_layers"] = (over(rows, comps["layers"]), rows)
    fns["grads_vmap"] = (over(rows, comps["vmap"]), rows)
    fns["grads_loop"] = (over(loop_rows, comps["loop"]), loop_rows)
    projectors: dict[str, Any] = {}
    for proj in PROJECTIONS:
        for k in KS:
            if proj == "dense" and k > 512 and dim > 100_000:
                # 2·D·k flops per row (2.2 TFLOP per 256 rows of the 1M MLP): minutes per round on a shared core;
                # its quality is dense's at 512 and better, its cost 8x that of k = 512
                out[f"{label}_{proj}{k}_corr"] = None
                continue
            p, fit_s = make(proj, k, dim, comps["layers"], fit, chunk)
            if proj == "pca":
                out[f"{label}_{proj}{k}_fit_s"] = round(fit_s, 2)
            qrows = slow_rows * 4 if proj == "dense" and dim > 100_000 else rows  # quality on fewer rows there
            feats = torch.cat([p.features(comps["layers"], xc, yc).clone() for xc, yc in _chunks(x, y, qrows, chunk)])
            out[f"{label}_{proj}{k}_corr"] = round(inner_product_correlation(feats, exact[:qrows], 200, 0), 4)
            # the share of the gradients' squared norm the features keep: ~1 for a random sketch, less for pca
            out[f"{label}_{proj}{k}_energy"] = round(float(feats.double().pow(2).sum() /
                                                           exact[:qrows].double().pow(2).sum()), 3)
            # what a cosine threshold (dedup) sees: mean |cos error| over every pair, and the pairs put above 0.9
            # whose exact cosine is below it
            err, crossed, pairs = cosine_errors(feats, exact[:qrows], 0.9)
            out[f"{label}_{proj}{k}_cos_err"] = round(err, 4)
            out[f"{label}_{proj}{k}_cos_above90"] = crossed
            out[f"{label}_cos_pairs"] = pairs
            if quality_seeds:  # the expected quality: every pair, averaged over projection seeds (untimed)
                alls = [inner_product_correlation(feats, exact[:qrows], None)]
                for s in range(1, quality_seeds if proj != "pca" else 1):  # no seed in a fitted basis
                    q = make(proj, k, dim, comps["layers"], fit, chunk, seed=s)[0]
                    fq = torch.cat([q.features(comps["layers"], xc, yc).clone()
                                    for xc, yc in _chunks(x, y, qrows, chunk)])
                    alls.append(inner_product_correlation(fq, exact[:qrows], None))
                out[f"{label}_{proj}{k}_corr_all"] = round(statistics.mean(alls), 4)
            if proj in ("factored", "pca"):
                out[f"{label}_{proj}_path"] = p.path
            projectors[f"{proj}{k}"] = p
            # dense projection of a 1M-wide gradient is the slowest cell by far: fewer rows, same per-row cost
            r = slow_rows if proj == "dense" and dim > 100_000 else rows
            _progress(f"{label}: {proj}{k} quality {out[f'{label}_{proj}{k}_corr']}")
            fns[f"{proj}{k}"] = (over(r, lambda xc, yc, p=p: p.features(comps["layers"], xc, yc)), r)
    today = GradNorms(model, cross_entropy, params, "layers")
    ghost = GradNorms(model, cross_entropy, params, "auto")
    fns["grand_today"] = (over(rows, today), rows)
    fns["grand_as_filed"] = (over(rows, AsFiledNorms(model, params)), rows)
    fns["grand_ghost"] = (over(rows, ghost), rows)
    rates = medians(fns, rounds)
    out[f"{label}_grand_mode"] = ghost.mode
    out |= {f"{label}_{name}_ex_s": round(v, 1) for name, v in rates.items()}
    fl = rates["floor"]
    for name in [*fns]:
        if name != "floor" and name in rates:
            out[f"{label}_{name}_over_floor"] = round(fl / rates[name], 3)  # time per example relative to the floor
    out[f"{label}_ghost_over_today"] = round(rates["grand_ghost"] / rates["grand_today"], 2)
    out[f"{label}_ghost_over_as_filed"] = round(rates["grand_ghost"] / rates["grand_as_filed"], 2)
    # ghost norms' error against the float64 per-example loop on a few rows
    k = min(16, rows)
    ref_model = model.double() if not isinstance(x, dict) else model
    xs, ys = slice_inputs(x, 0, k), y[:k]
    if not isinstance(x, dict):
        xs = xs.double()
    ref = torch.linalg.vector_norm(PerSampleGrads(ref_model, cross_entropy, params, "loop")(xs, ys), dim=1)
    got = GradNorms(ref_model, cross_entropy, params, "auto")(xs, ys)
    out[f"{label}_ghost_rel_err"] = float(((got.double() - ref.double()).abs() / ref.double()).max())
    model.float()
    if sweep:  # the factored budget split: quality only (untimed), per (factor_dim, out_share) at each k
        for fd in ("auto", 256, 1024, 16384):
            for share in (0.5, 0.75, 0.9):
                for kk in KS:
                    p = make_projector({**SETTINGS, "projection": "factored", "dim": kk, "factor_dim": fd,
                                        "factor_out_share": share}, dim, DEVICE, grads=comps["layers"])
                    feats = torch.cat([p.features(comps["layers"], xc, yc) for xc, yc in _chunks(x, y, rows, chunk)])
                    out[f"{label}_sweep_fd{fd}_share{share}_k{kk}_corr"] = round(
                        inner_product_correlation(feats, exact, 200, 0), 4)
    return out


def cosine_errors(feats: torch.Tensor, exact: torch.Tensor, threshold: float) -> tuple[float, int, int]:
    """Mean |cosine of features - exact cosine| over every pair i < j, the pairs whose feature cosine exceeds
    ``threshold`` while the exact one does not, and the number of pairs."""
    def cos(m: torch.Tensor) -> torch.Tensor:
        u = m.double() / m.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
        i, j = torch.triu_indices(len(u), len(u), 1)
        return (u @ u.T)[i, j]

    cf, ce = cos(feats), cos(exact)
    return float((cf - ce).abs().mean()), int(((cf > threshold) & (ce <= threshold)).sum()), int(ce.numel())


def _to_device(x: Any) -> Any:
    return {k: v.to(DEVICE) for k, v in x.items()} if isinstance(x, dict) else x.to(DEVICE)


def report(label: str, title: str, f: dict[str, Any]) -> None:
    fl = f[f"{label}_floor_ex_s"]
    print(f"{title}: D = {f[f'{label}_D']:,}, auto -> {f[f'{label}_auto_mode']}")
    print(f"  floor (batched fwd+bwd) {fl:10.1f} ex/s")
    for m in ("layers", "vmap", "loop"):
        print(f"  grads {m:<7}           {f[f'{label}_grads_{m}_ex_s']:10.1f} ex/s  "
              f"{f[f'{label}_grads_{m}_over_floor']:7.2f}x floor")
    for proj in PROJECTIONS:
        for k in KS:
            if f"{label}_{proj}{k}_ex_s" not in f:
                print(f"  grads+{proj:<8} k={k:<5} not timed (2·D·k flops per row)")
                continue
            bar = "ok " if f[f"{label}_{proj}{k}_corr"] >= BAR[k] else "LOW"
            every = f.get(f"{label}_{proj}{k}_corr_all")
            print(f"  grads+{proj:<8} k={k:<5} {f[f'{label}_{proj}{k}_ex_s']:10.1f} ex/s  "
                  f"{f[f'{label}_{proj}{k}_over_floor']:7.2f}x floor   corr {f[f'{label}_{proj}{k}_corr']:.3f} {bar}"
                  + (f"  (every pair, mean of seeds: {every:.3f})" if every is not None else "")
                  + f"  energy {f[f'{label}_{proj}{k}_energy']:.2f}"
                  + f"  |dcos| {f[f'{label}_{proj}{k}_cos_err']:.3f}, {f[f'{label}_{proj}{k}_cos_above90']} false >0.9"
                  + (f"  fit {f[f'{label}_{proj}{k}_fit_s']:.1f} s" if f"{label}_{proj}{k}_fit_s" in f else ""))
    print(f"  GraNd materialized {f[f'{label}_grand_as_filed_ex_s']:.1f} ex/s, today {f[f'{label}_grand_today_ex_s']:.1f} "
          f"ex/s, ghost ({f[f'{label}_grand_mode']}) {f[f'{label}_grand_ghost_ex_s']:.1f} ex/s "
          f"({f[f'{label}_ghost_over_as_filed']:.1f}x materialized, {f[f'{label}_ghost_over_today']:.1f}x today), "
          f"ghost rel. error {f[f'{label}_ghost_rel_err']:.1e}")
    sweep = {k: v for k, v in f.items() if k.startswith(f"{label}_sweep_")}
    if sweep:
        print("  factored split sweep (corr): " + ", ".join(f"{k[len(label) + 7:-5]} {v:.3f}" for k, v in sweep.items()))


def plot(figures: dict[str, Any], path: str) -> None:
    """Speed against quality, one panel per model: each projector at each k, the bars as lines."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m for m in ("cnn", "mlp", "hf") if f"{m}_floor_ex_s" in figures]
    titles = {"cnn": "default CNN (D = 8,010)", "mlp": "MLP (D = 1.05M)", "hf": "MiniLM + LoRA (D = 36,864)"}
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4.0), squeeze=False)
    colors = {p: f"C{i}" for i, p in enumerate(PROJECTIONS)}
    for ax, label in zip(axes[0], labels):
        for proj in PROJECTIONS:
            for k, marker in zip(KS, ("o", "s")):
                t, c = figures.get(f"{label}_{proj}{k}_over_floor"), figures.get(f"{label}_{proj}{k}_corr")
                if t is None or c is None:
                    continue
                ax.scatter(t, c, color=colors[proj], marker=marker, s=40, label=f"{proj} k={k}")
        for k, ls in zip(KS, ("--", ":")):
            ax.axhline(BAR[k], color="grey", ls=ls, lw=0.8)
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0) if hi / lo < 100 else (1.0,)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("time per example ÷ floor (log)")
        ax.set_title(titles[label], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("inner-product correlation (200 pairs)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("gradient features: speed against quality (grey: the bars at k = 512 --, 4096 ..)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def best_meeting_bar(f: dict[str, Any], label: str, k: int) -> tuple[str, float, float]:
    """(projector, ratio to the floor, corr) of the fastest projector meeting the bar at k (else the best corr)."""
    cands = [(p, f[f"{label}_{p}{k}_over_floor"], f[f"{label}_{p}{k}_corr"]) for p in PROJECTIONS
             if f"{label}_{p}{k}_over_floor" in f]
    ok = [c for c in cands if c[2] >= BAR[k]]
    return min(ok, key=lambda c: c[1]) if ok else max(cands, key=lambda c: c[2])


def hf_inputs(n: int, n_fit: int, max_length: int = 64) -> tuple[torch.nn.Module, dict[str, torch.Tensor],
                                                                   torch.Tensor, Any, tuple[Any, torch.Tensor]]:
    """Model, inputs, labels and parameter spec, and ``n_fit`` other texts for fitting the pca basis."""
    from datasel.features.hf import build_text_classifier, tokenize
    from datasel.features.textdata import stdlib_docstrings

    df = stdlib_docstrings()
    df = df.gather_every(max(1, df.height // (n + n_fit))).head(n + n_fit)  # every module, not the first one only
    texts = df.get_column("text").to_list()
    codes = {m: i for i, m in enumerate(sorted(set(df.get_column("label").to_list())))}
    y = torch.tensor([codes[m] for m in df.get_column("label").to_list()])
    model, tok, spec = build_text_classifier({"trainable": "lora", "max_length": max_length}, texts, y, len(codes))
    enc = dict(tokenize(tok, texts, max_length))
    judged = torch.arange(len(texts)) % 2 == 0 if n_fit else torch.ones(len(texts), dtype=torch.bool)
    judged[judged.cumsum(0) > n] = False  # n judged texts, interleaved with the fitted ones
    pick = {k: v[judged] for k, v in enc.items()}
    fit = ({k: v[~judged] for k, v in enc.items()}, y[~judged]) if n_fit else (pick, y[judged])
    return model.eval(), pick, y[judged], spec, fit


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own address space; ru_maxrss does not
    restart at exec on Linux, so a child forked from a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def large_child(n: int, out_dir: str, chunk: int, params: str) -> None:
    torch.set_num_threads(1)
    model = _vector_model(CNN_CFG)
    t = time.perf_counter()
    featurize(model, SyntheticInputs(n), SyntheticInputs(n, labels=True), out_dir,
              {"params": params, "dim": 512, "chunk_size": chunk, "seed": 0}, ids=None,
              identity={"model": json.dumps(CNN_CFG), "checkpoint": "init", "split": "synthetic"})
    secs = time.perf_counter() - t
    rss_mb = peak_rss_mb()
    print(json.dumps({"n": n, "seconds": secs, "peak_rss_mb": rss_mb,
                      "bytes": (Path(out_dir) / "features.f16").stat().st_size}))


def large(n: int, chunk: int, params: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, __file__, "--child", str(n), "--out", f"{tmp}/shard", "--chunk",
                              str(chunk), "--large-params", params], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,mlp", help="vector models to run: cnn, mlp")
    ap.add_argument("--n", type=int, default=1024, help="CNN examples per timing (the MLP takes n/8)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians); the MLP and MiniLM take 3")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--hf", type=int, default=64, help="texts for the all-MiniLM-L6-v2 LoRA timings (0 to skip)")
    ap.add_argument("--large", default="100000,1000000", help="comma-separated N for the memory runs ('' to skip)")
    ap.add_argument("--large-chunk", type=int, default=1024)
    ap.add_argument("--large-params", default="all", help="parameter set of the memory runs (last_layer: quicker)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the factored budget-split quality sweep")
    ap.add_argument("--quality-seeds", type=int, default=3,
                    help="projection seeds of the every-pair quality figure (`_corr_all`; 0 to skip)")
    ap.add_argument("--factor-dim", default="", help="time factored with this factor_dim, auto or a size (default: DEFAULTS)")
    ap.add_argument("--factor-rank", type=int, default=0, help="pca: directions per layer side (default: DEFAULTS)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: the device of every timing (the memory "
                    "runs stay on the CPU)")
    ap.add_argument("--plot", default="", help="also draw speed against quality per model into this PNG")
    ap.add_argument("--replot", default="", help="only draw --plot from a saved run's output (its last line)")
    ap.add_argument("--child", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text().strip().splitlines()[-1]), args.plot or "features.png")
        return
    torch.set_num_threads(1)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch sees no CUDA device here")
    if args.factor_dim:
        SETTINGS["factor_dim"] = args.factor_dim if args.factor_dim == "auto" else int(args.factor_dim)
    if args.factor_rank:
        SETTINGS["factor_rank"] = args.factor_rank
    if args.child:
        large_child(args.child, args.out, args.chunk, args.large_params)
        return
    figures: dict[str, Any] = {"threads": 1, "device": str(DEVICE),
                               "settings": {k: SETTINGS[k] for k in ("projection", "sparse_nnz", "factor_dim",
                                                                     "factor_out_share", "factor_rank")}}
    models = [m for m in args.models.split(",") if m]
    if "cnn" in models:
        x, y = SyntheticInputs(args.n)[0 : args.n], SyntheticInputs(args.n, labels=True)[0 : args.n]
        figures |= bench("cnn", _vector_model(CNN_CFG), x, y, "all", chunk=args.chunk, rows=args.n, loop_rows=128,
                         slow_rows=args.n, rounds=args.rounds, sweep=not args.no_sweep, fit=_fit_rows(),
                         quality_seeds=args.quality_seeds)
        report("cnn", f"default CNN {CNN_CFG}, chunk {args.chunk}, 1 thread", figures)
    if "mlp" in models:
        n = max(32, args.n // 8)
        x, y = SyntheticInputs(n)[0:n], SyntheticInputs(n, labels=True)[0:n]
        figures |= bench("mlp", _vector_model(MLP_CFG), x, y, "all", chunk=min(args.chunk, 64), rows=n, loop_rows=32,
                         slow_rows=16, rounds=min(args.rounds, 3), sweep=not args.no_sweep, fit=_fit_rows(),
                         quality_seeds=args.quality_seeds)
        report("mlp", f"MLP {MLP_CFG}, chunk {min(args.chunk, 64)}, 1 thread", figures)
    if args.hf:
        model, enc, y, spec, fit = hf_inputs(args.hf, args.hf)
        figures |= bench("hf", model, enc, y, spec, chunk=16, rows=args.hf, loop_rows=16, slow_rows=args.hf,
                         rounds=min(args.rounds, 3), sweep=False, fit=fit, quality_seeds=args.quality_seeds)
        report("hf", f"all-MiniLM-L6-v2 + LoRA, {args.hf} texts of 64 tokens, chunk 16, 1 thread", figures)
    for n in [int(v) for v in args.large.split(",") if v]:
        r = large(n, args.large_chunk, args.large_params)
        print(f"  featurize {n:>9,d} CNN examples ({args.large_params}) -> 512 ({DEFAULTS['projection']}): "
              f"{r['seconds']:8.1f} s, "
              f"{n / r['seconds']:8.0f} ex/s, peak RSS {r['peak_rss_mb']:.0f} MB, store {r['bytes'] / 2**20:.0f} MiB")
        figures[f"rss_mb_{n}"] = round(r["peak_rss_mb"], 1)
        figures[f"featurize_ex_s_{n}"] = round(n / r["seconds"], 1)
        figures["large_params"] = args.large_params
    goals: dict[str, Any] = {}
    for label, lim in (("cnn", {512: 1.5, 4096: 2.5}), ("mlp", {512: 3.0, 4096: 12.0})):
        if f"{label}_floor_ex_s" not in figures:
            continue
        for k in KS:
            proj, ratio, corr = best_meeting_bar(figures, label, k)
            goals[f"{label}_k{k}"] = {"projector": proj, "over_floor": ratio, "goal_over_floor": lim[k],
                                      "corr": corr, "goal_corr": BAR[k],
                                      "corr_every_pair": figures.get(f"{label}_{proj}{k}_corr_all"),
                                      "dense_corr_every_pair": figures.get(f"{label}_dense{k}_corr_all")}
        goals[f"{label}_ghost_over_as_filed"] = figures[f"{label}_ghost_over_as_filed"]  # the goal's "today's"
        goals[f"{label}_ghost_over_today"] = figures[f"{label}_ghost_over_today"]  # against the copy-free fallback
        # under 1: ghost norms cost less than one plain batched forward+backward
        goals[f"{label}_ghost_time_over_floor"] = figures[f"{label}_grand_ghost_over_floor"]
        goals[f"{label}_ghost_rel_err"] = figures[f"{label}_ghost_rel_err"]
    for n in (100000, 1000000):
        if f"rss_mb_{n}" in figures:
            goals[f"rss_mb_{n}"] = figures[f"rss_mb_{n}"]
    figures["goals"] = goals
    if args.plot:
        plot(figures, args.plot)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
