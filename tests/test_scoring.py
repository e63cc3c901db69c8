"""EL2N and GraNd against closed forms and a slow per-example loop; the mean over proxy runs; ranking."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from datasel.features.grads import per_sample_grad_norms, per_sample_grads
from datasel.models import build_model
from datasel.scoring import SCORERS, ScoreInputs, finalize_scores
from datasel.scoring.el2n import el2n
from datasel.store import write_table
from datasel.training.proxy import save_checkpoint

META = {"input_dim": 40, "num_classes": 10}


def _loop_grads(model, x, y):
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_vmap_grads_match_loop_in_float64(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "hidden": [16], "channels": 8}, META).double()
    x, y = torch.randn(13, 40, dtype=torch.float64), torch.randint(0, 10, (13,))
    fast = per_sample_grads(model, x, y, F.cross_entropy, chunk_size=5)
    slow = _loop_grads(model, x, y)
    rel = ((fast - slow).norm(dim=1) / slow.norm(dim=1)).max().item()
    assert rel < 1e-10
    norms = per_sample_grad_norms(model, x, y, F.cross_entropy, chunk_size=4)
    assert torch.allclose(norms, slow.norm(dim=1), rtol=1e-10)


def test_last_layer_grand_has_closed_form():
    # For a linear head on features h: dL/dW = (p - y) h^T, dL/db = p - y, so the norm is ‖p - y‖·sqrt(‖h‖² + 1).
    torch.manual_seed(1)
    model = build_model({"name": "mlp", "hidden": [12]}, META).double()
    x, y = torch.randn(9, 40, dtype=torch.float64), torch.randint(0, 10, (9,))
    got = per_sample_grad_norms(model, x, y, F.cross_entropy, params="last_layer")
    h = model.features(x)
    p = torch.softmax(model(x), 1)
    err = (p - F.one_hot(y, 10)).norm(dim=1)
    assert torch.allclose(got, err * (h.pow(2).sum(1) + 1).sqrt(), rtol=1e-10)


def test_el2n_known_value():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x, y = torch.tensor([[np.log(3.0), 0.0]], dtype=torch.float32), torch.tensor([1])
    # softmax([ln 3, 0]) = [3/4, 1/4]; EL2N against class 1 = ‖(3/4, -3/4)‖ = 3/4·√2
    assert el2n(model, x, y).item() == pytest.approx(0.75 * np.sqrt(2), rel=1e-6)


def test_scorers_average_over_proxy_runs(tmp_path, tiny_examples):
    df, meta = tiny_examples
    write_table(df, tmp_path / "examples.parquet", "examples")
    cfg = {"name": "mlp", "hidden": [8]}
    paths = []
    for k in range(3):
        torch.manual_seed(k)
        save_checkpoint(tmp_path / f"c{k}.pt", build_model(cfg, meta), model_cfg=cfg)
        paths.append(tmp_path / f"c{k}.pt")
    inputs = ScoreInputs(examples=tmp_path / "examples.parquet", meta=json.loads(json.dumps(meta)), checkpoints=paths)
    out = SCORERS.get("el2n")({}).score(inputs)
    singles = [SCORERS.get("el2n")({}).score(ScoreInputs(inputs.examples, meta, [p])) for p in paths]
    mean = np.mean([s.get_column("score").to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(out.get_column("score").to_numpy(), mean, rtol=1e-6)
    assert (out.get_column("score_std") > 0).all()


def test_finalize_scores_ranks_highest_first_with_id_tiebreak():
    df = pl.DataFrame({"example_id": ["c", "a", "b", "d"], "score": [0.5, 0.9, 0.5, 0.1]})
    out = finalize_scores(df, "m")
    assert out.get_column("example_id").to_list() == ["a", "b", "c", "d"]
    assert out.get_column("rank").to_list() == [1, 2, 3, 4]
    assert out.columns[:4] == ["example_id", "method", "score", "rank"]


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny_examples):
    from datasel.errors import DataError
    from datasel.training.proxy import load_checkpoint

    _, meta = tiny_examples
    cfg = {"name": "mlp", "hidden": [8]}
    save_checkpoint(tmp_path / "c.pt", build_model(cfg, meta), model_cfg=cfg)
    with pytest.raises(DataError, match="checkpoint was made by model"):
        load_checkpoint(tmp_path / "c.pt", meta, {"name": "cnn1d"})
