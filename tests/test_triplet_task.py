"""Triplets as a task kind: make_task names it, its model, splits and InfoNCE loss are GAPrune's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gaprune import make_triplets

from datasel.errors import ConfigError
from datasel.pruning.pipeline import load_model, triplet_task
from datasel.tasks import make_task
from datasel.tasks.triplets import TripletTask
from datasel.training.embedding import triplet_loss

torch.set_num_threads(1)

CFG = {"model": "tiny-random-bert", "max_seq_len": 32, "device": "cpu", "fisher": {"scale": 20.0}}


@pytest.fixture(scope="module")
def triplets():
    from datasel.data.triplets import Triplets

    return Triplets.concat([make_triplets(8, "domain", "train", 0), make_triplets(5, "domain", "eval", 1),
                            make_triplets(6, "general", "train", 2)])


def test_make_task_names_the_triplet_kind(triplets):
    task = make_task(triplets.to_frame(), {}, {"name": "hf_embedding", "path": "tiny-random-bert",
                                                "max_seq_len": 32, "device": "cpu"})
    assert isinstance(task, TripletTask) and task.kind == "triplets"
    assert len(task.split("train")) == 14 and len(task.split("train", "domain")) == 8
    assert task.split("eval").triplet_id == triplets.where("domain", "eval").triplet_id
    with pytest.raises(ConfigError, match="triplets"):  # a classifier cannot take triplets
        make_task(triplets.to_frame(), {"kind": "triplets"}, {"name": "mlp"})


def test_per_example_loss_is_infonce_per_query(triplets):
    task = triplet_task(CFG, triplets)
    model = task.build_model().eval()  # no dropout: the three computations see one function
    batch = task.split("train", "domain").subset(range(6))
    with torch.no_grad():
        logits, target = task.logits(model, batch)
    per = task.per_example_loss(logits, target)
    assert per.shape == (6,) and logits.shape == (6, 12)
    with torch.no_grad():
        assert float(per.mean()) == pytest.approx(float(triplet_loss(model, batch, 20.0, 32)), rel=1e-6)
    # an independent reference for query 0: cosine × 20 against every positive and negative, softmax on its own
    with torch.no_grad():
        q = F.normalize(model.embed(batch.query, 32), dim=-1)
        docs = F.normalize(torch.cat([model.embed(batch.positive, 32), model.embed(batch.negative, 32)]), dim=-1)
        row = (q[0] @ docs.T) * 20
    assert float(per[0]) == pytest.approx(float(torch.logsumexp(row, 0) - row[0]), rel=1e-5)


def test_a_model_that_cannot_embed_is_refused(triplets):
    task = triplet_task(CFG, triplets)
    with pytest.raises(ConfigError, match="cannot embed"):
        task.check_model(torch.nn.Linear(3, 2), "gaprune.model")
    assert load_model(CFG).training is False  # built, checked on a probe, and left in eval mode
