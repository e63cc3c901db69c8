"""The selection chain on instruction data, its rule steps called in one process (each Snakemake job would pay
seconds of torch/transformers imports): generate -> tiny model -> prepare -> proxy (LESS's warm-up) -> features ->
LESS score -> selections -> training -> report. ``tests/test_instruct.py`` checks the Snakefile wires the same
steps together."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

from datasel.config import check_config, load_config
from datasel.features.steps import features_gather, features_shard
from datasel.instruct import families
from datasel.instruct.model import build_tiny_lm
from datasel.pipeline import prepare, score, select, train
from datasel.report.build import report
from datasel.selection.draws import policy_draws
from datasel.training.proxy import run_proxy
from datasel.workflow_support import check_lm_models, resolve_lm_models, selection_info, selection_names

TINY_LM = {"name": "causal_lm", "tiny": {"vocab_size": 300, "n_embd": 32, "n_layer": 1, "n_head": 2,
                                         "n_positions": 64},
           "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}}

CONFIG: dict[str, Any] = {
    "stages": ["selection"],
    "compute": {"device": "cpu"},
    "data": {"source": "instruct",
             "instruct": {"pool": "data/pool.jsonl", "target": "data/target.jsonl", "test": "data/test.jsonl",
                          "max_length": 40,
                          "generate": {"per_family": 12, "target": 8, "test": 6, "target_family": "arith", "seed": 0,
                                       "families": ["arith", "docname", "reverse", "sort", "module"]}}},
    "proxy": {"model": TINY_LM, "seeds": 1, "fraction": 0.3, "epochs": 2, "checkpoints": [1, 2], "batch_size": 8,
              "optimizer": "adamw", "lr": 0.01, "schedule": "linear"},
    "features": {"shards": 2, "sets": {"less": {"params": "lora", "dim": 64, "precondition": "adam",
                                                "splits": ["train", "val"], "chunk_size": 8}}},
    "scoring": {"less": {"method": "target_alignment", "features": "less", "reduce": "task_max", "weights": "lr"}},
    "selection": {"fractions": [0.25], "policies": {"less_top": {"policy": "top", "score": "less"},
                                                    "random": {"policy": "random"},
                                                    "target": {"policy": "target"}}},
    "training": {"model": TINY_LM, "seeds": [0], "budget": {"unit": "epochs", "value": 1}, "batch_size": 8,
                 "optimizer": "adamw", "lr": 0.01, "schedule": "linear", "curve_points": 0,
                 "generation": {"max_new_tokens": 3}},
}


def checked(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` written to ``folder/config.yaml``, checked and filled as the Snakefile does."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = check_config(load_config([folder / "config.yaml"]), ROOT / "workflow" / "schemas")
    check_lm_models(out)
    return resolve_lm_models(out)


def run_chain(folder: Path, cfg: dict[str, Any] | None = None, train_too: bool = True,
              lm: Path | None = None) -> dict[str, Any]:
    """The chain in ``folder`` (the working directory must be ``folder``: paths are the workflow's relative ones).
    ``lm``: a model folder used instead of the tiny GPT-2 the chain builds."""
    cfg = checked(folder, copy.deepcopy(cfg or CONFIG))
    ins = cfg["data"]["instruct"]
    if ins.get("generate") is not None:
        families.write(ins["generate"], {r: ins[r] for r in ("pool", "target", "test")})
    if lm is None:
        build_tiny_lm(ins, cfg["training"]["model"]["tiny"], "results/lm/base_model")
        lm = Path("results/lm/base_model")
    else:
        for section in ("proxy", "training"):
            cfg[section]["model"] = {k: v for k, v in cfg[section]["model"].items() if k != "tiny"} | {"path": str(lm)}
    r = Path("results")
    ex, meta = r / "examples/examples.parquet", r / "examples/meta.json"
    prepare(cfg["data"], ex, meta, lm=str(lm))
    proxy = {k: v for k, v in cfg["proxy"].items() if k != "seeds"}
    ckpts = [r / f"proxy/seed0/epoch{e}.pt" for e in proxy["checkpoints"]]
    run_proxy(ex, meta, [*ckpts, r / "proxy/seed0/sample.parquet"], proxy, 0, device="cpu")
    sets: dict[str, list[Path]] = {}
    for set_name, fset in cfg["features"]["sets"].items():
        sets[set_name] = []
        for e in fset.get("epochs") or proxy["checkpoints"]:
            for split in fset["splits"]:
                where = r / f"features/{set_name}/seed0-epoch{e}-{split}"
                shards = [where / f"shard_{i}" for i in range(cfg["features"]["shards"])]
                for i, out in enumerate(shards):
                    features_shard(ex, meta, out, name=set_name, fset={k: v for k, v in fset.items()
                                                                       if k not in ("seeds", "epochs", "splits")},
                                   shards=cfg["features"]["shards"], shard=i, split=split, ckpt=f"seed0-epoch{e}",
                                   checkpoint=r / f"proxy/seed0/epoch{e}.pt", proxy=proxy, device="cpu")
                features_gather(shards, where / "index.json", name=set_name, ckpt=f"seed0-epoch{e}", split=split)
                sets[set_name].append(where / "index.json")
    tables = {}
    for entry_name, entry in cfg["scoring"].items():
        tables[entry_name] = r / f"scores/{entry_name}.parquet"
        score(entry_name, entry, ex, meta, tables[entry_name], features=sets[entry["features"]], device="cpu")
    indexes, scores = sets["less"], tables["less"]
    sels = {}
    for name in selection_names(cfg):
        info = selection_info(name)
        entry = cfg["selection"]["policies"].get(info["method"], {"policy": "full"})
        out = r / f"selections/{name}.parquet"
        select(info["method"], entry, info["fraction"], cfg["selection"]["seed"], ex, out,
               scores=tables[entry["score"]] if entry.get("score") else None,
               draws=policy_draws(entry, cfg["training"]["seeds"]), meta=meta)
        sels[name] = out
    chain = {"cfg": cfg, "lm": lm, "examples": ex, "meta": meta, "checkpoints": ckpts, "features": indexes,
             "scores": scores, "feature_sets": sets, "score_tables": tables, "selections": sels}
    if not train_too:
        return chain
    metrics = []
    for name, path in sels.items():
        for seed in cfg["training"]["seeds"]:
            out = r / f"metrics/train/{name}/seed{seed}.parquet"
            train(ex, meta, path, out, cfg["training"], seed, name, selection_info(name), device="cpu",
                  curves_out=r / f"curves/{name}/seed{seed}.parquet")
            metrics.append(out)
    rep = r / "report"
    report(ex, metrics, list(sels.values()), csv=rep / "summary.csv", md=rep / "summary.md", rst=rep / "summary.rst",
           plot=rep / "accuracy_vs_fraction.png", meta=meta, scores=list(tables.values()))
    return chain | {"metrics": metrics, "report": rep}
