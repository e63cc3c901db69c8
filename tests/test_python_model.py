"""Your own model (``model: {name: python, builder: "module:function"}``): the contract and its clear errors, and a
user model through proxy → GraNd(last_layer) → train in the workflow."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import torch
from conftest import TINY, snakemake, write_config
from torch import nn

from datasel.errors import ConfigError
from datasel.models import build_model
from datasel.tasks import make_task


class Wide(nn.Module):
    """A user's model: a residual block, then the head registered last (what ``last_layer`` finds)."""

    def __init__(self, in_dim: int, width: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.relu(h + self.block(h)))


def build(cfg, meta):
    return Wide(int(meta["input_dim"]), int(cfg.get("width", 16)), int(meta["num_classes"]))


def build_wrong_shape(cfg, meta):
    return nn.Linear(int(meta["input_dim"]), int(meta["num_classes"]) + 1)


def build_not_a_module(cfg, meta):
    return "a string"


def build_raises(cfg, meta):
    raise KeyError("width")


META = {"kind": "vector", "input_dim": 40, "num_classes": 10}


def test_builder_gets_its_config_and_the_meta():
    model = build_model({"name": "python", "builder": "test_python_model:build", "width": 7}, META)
    assert isinstance(model, Wide) and model.inp.out_features == 7 and model.out.out_features == 10


def test_last_layer_is_the_last_registered_linear():
    from datasel.features.grads import select_params

    model = build_model({"name": "python", "builder": "test_python_model:build"}, META)
    assert set(select_params(model, "last_layer")) == {"out.weight", "out.bias"}


@pytest.mark.parametrize("builder, words", [
    ("no_such_module_xyz:build", ["cannot import", "no_such_module_xyz"]),
    ("test_python_model:missing", ["has no function", "missing"]),
    ("test_python_model:build_not_a_module", ["not a torch.nn.Module", "str"]),
    ("test_python_model:build_raises", ["raised KeyError"]),
    ("test_python_model_bad_import:build", ["importing", "no_such_dependency_xyz"]),
    ("no-colon", ["package.module:function"]),
])
def test_builder_errors_name_the_field_and_cause(builder, words, tmp_path, monkeypatch):
    (tmp_path / "test_python_model_bad_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_model({"name": "python", "builder": builder}, META, where="proxy.model")
    assert err.value.field == "proxy.model.builder"
    assert all(w in str(err.value) for w in words), str(err.value)
    assert err.value.fix


def test_wrong_output_shape_is_caught_before_training(tiny_examples):
    df, meta = tiny_examples
    task = make_task(df, meta, {"name": "python", "builder": "test_python_model:build_wrong_shape"}, "training.model")
    with pytest.raises(ConfigError) as err:
        task.build_model("training.model")
    assert err.value.field == "training.model" and "(2, 11)" in str(err.value) and "(2, 10)" in str(err.value)


def test_a_user_model_runs_through_the_workflow(tmp_path):
    # the builder lives in a module next to the config, imported from the working directory
    import inspect
    import sys

    (tmp_path / "my_models.py").write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(Wide)
                                           + "\n\n" + inspect.getsource(build))
    cfg = copy.deepcopy(TINY)
    user = {"name": "python", "builder": "my_models:build", "width": 24}
    cfg["proxy"] |= {"model": user, "seeds": 1}
    cfg["training"] |= {"model": user, "seeds": [0]}
    cfg["scoring"] = {"el2n": {"method": "el2n", "epoch": 1},
                      "grand_last_layer": {"method": "grand", "epoch": 1, "params": "last_layer"}}
    cfg["selection"]["policies"]["grand_top"] = {"policy": "top", "score": "grand_last_layer"}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    summary = pl.read_csv(tmp_path / "results" / "report" / "summary.csv")
    assert {"grand_top_keep50", "full_keep100"} <= set(summary.get_column("selection"))
    scores = pl.read_parquet(tmp_path / "results" / "scores" / "grand_last_layer.parquet")
    assert scores.get_column("score").std() > 0 and sys.modules.get("my_models") is None
