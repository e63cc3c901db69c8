"""Shared fixtures: a tiny MNIST-1D examples table and a workflow runner on tiny configs."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "stages": ["selection"],
    "data": {"source": "mnist1d", "mnist1d": {"num_samples": 600, "seed": 3}, "noise": {"fraction": 0.2, "seed": 0}},
    "proxy": {"seeds": 2, "model": {"name": "mlp", "hidden": [32]}, "epochs": 3, "checkpoints": [0, 1, 3],
              "batch_size": 64},
    "scoring": {"el2n": {"method": "el2n", "epoch": 1}, "grand": {"method": "grand", "epoch": 1}},
    "selection": {"fractions": [0.5], "policies": {"random": {"policy": "random"},
                                                    "el2n_offset": {"policy": "offset", "score": "el2n", "offset": 0.1}}},
    "training": {"model": {"name": "mlp", "hidden": [32]}, "seeds": [0, 1], "budget": {"unit": "steps", "value": 40},
                 "batch_size": 64},
}


class AnyJob:
    """Stands for the object Snakemake hands a script: every attribute, item, call and conversion answers (a wildcard
    reads as "0", an output list has one entry); ``config`` is the run's config when one is given."""

    def __init__(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = config

    def __getattr__(self, name: str) -> AnyJob:
        return AnyJob()

    def __getitem__(self, key: object) -> AnyJob:
        return AnyJob()

    def __call__(self, *args: object, **kwargs: object) -> AnyJob:
        return AnyJob()

    def __iter__(self):
        return iter([AnyJob()])

    def __len__(self) -> int:
        return 1

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0

    def __str__(self) -> str:
        return "0"


def script_step(script: Path) -> tuple[ast.Module, ModuleType, str]:
    """A workflow script's parsed source, and the library module and name of the one step it calls."""
    tree = ast.parse(script.read_text())
    (module, name), = [(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom)
                       for a in n.names if n.module != "datasel.snakemake_entry"]
    return tree, importlib.import_module(module), name


def recording(step: Any, calls: list) -> Any:
    """A stand-in for ``step`` that records the arguments each call binds to its signature."""
    import inspect

    sig = inspect.signature(step)
    return lambda *a, **k: calls.append(sig.bind(*a, **k))


@pytest.fixture(scope="session")
def tiny_examples():
    from datasel.data.prepare import build_examples

    return build_examples(TINY["data"])


def write_config(workdir: Path, cfg: dict) -> Path:
    """A run folder: our config as <workdir>/config.yaml (complete on its own; snakemake() passes it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake_cmd(workdir: Path, *args: str, cores: str = "2") -> list[str]:
    """The repository's Snakefile run in ``workdir`` on the folder's config.yaml (when the args name none)."""
    cfg = workdir / "config.yaml"
    own = [f"--configfile={cfg}"] if cfg.exists() and not any(a.startswith("--configfile") for a in args) else []
    # `--configfile=X` (one word) takes one file, so targets may follow it
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--cores", cores, "--scheduler", "greedy", *own, *args]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DATASEL_PROGRESS": "0"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_results(tmp_path: Path, examples, meta: dict, score_of_x: str, score_name: str):
    """A results/ folder holding the examples table, its meta and a score table (a reduction of each row's x)."""
    import json

    import polars as pl

    from datasel.scoring import finalize_scores
    from datasel.store import write_table

    res = tmp_path / "results"
    write_table(examples, res / "examples" / "examples.parquet", "examples")
    (res / "examples" / "meta.json").write_text(json.dumps(meta))
    train = examples.filter(pl.col("split") == "train")
    reduce = getattr(pl.col("x").list, score_of_x)()
    scores = finalize_scores(train.select("example_id", reduce.cast(pl.Float64).alias("score")), score_name)
    return res, scores


def per_example_reference(model, x, y, names: list[str]):
    """Per-example gradients by their definition: a fresh backward pass per example, read from ``.grad``."""
    import torch
    from torch import nn

    params = dict(model.named_parameters())
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([(params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]))
                               .reshape(-1).clone() for n in names]))
    return torch.stack(rows)
