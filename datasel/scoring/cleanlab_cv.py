"""cleanlab (Northcutt et al. 2021, confident learning) as a score: the reference label-noise detector.

cleanlab needs *out-of-sample* predicted probabilities (its documentation: never predictions of a model that
trained on the example), so this scorer trains ``folds`` proxies by stratified cross-validation with the proxy
section's model and recipe (``epochs`` overrides proxy.epochs), each predicting the fold it did not see. Then
``cleanlab.filter.find_label_issues(labels, pred_probs, filter_by=...)`` flags the label issues (column
``label_issue``; their share is cleanlab's estimate of the noise rate, which the ``filter`` policy uses), and the
score is 1 − ``cleanlab.rank.get_label_quality_scores`` (self-confidence): high = likely mislabeled.

cleanlab is an optional dependency (the ``benchmark`` extra), imported only when this scorer runs.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import polars as pl
import torch

from datasel.errors import ConfigError, DataError
from datasel.scoring.base import SCORERS, ScoreInputs, Scorer

log = logging.getLogger(__name__)


def import_cleanlab() -> Any:
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise ConfigError("scoring method 'cleanlab' needs the cleanlab package, which is not installed",
                          field="scoring.<entry>.method",
                          fix="pip install 'datasel[benchmark]' (or pip install cleanlab), or drop the cleanlab entry"
                          ) from None
    return cleanlab


def out_of_fold_probs(task: Any, proxy_cfg: dict[str, Any], folds: int, seed: int, device: str = "auto"
                      ) -> np.ndarray:
    """(N, C) predicted probabilities of the training split, each row from the fold model that did not train on it."""
    from sklearn.model_selection import StratifiedKFold

    from datasel.runtime import pick_device, seed_everything
    from datasel.training.classify import predict_proba, train_classifier

    train = task.split("train")
    y = train.labels.numpy()
    if np.bincount(y).min(initial=len(y)) < folds:
        raise DataError(f"a class has fewer than {folds} training examples, too few for {folds}-fold "
                        "cross-validation", field="scoring.<entry>.folds", fix="lower folds (at least 2)")
    probs: np.ndarray | None = None
    cfg = {**proxy_cfg, "budget": {"unit": "epochs", "value": int(proxy_cfg["epochs"])}}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        seed_everything(2000 + seed * 100 + k)  # fold models differ from the proxy runs (1000 + seed)
        model = task.build_model("proxy.model").to(pick_device(device))
        part = train.subset(torch.as_tensor(fit, dtype=torch.long))
        train_classifier(model, part.inputs, part.labels, cfg, seed=2000 + seed * 100 + k,
                         desc=f"cleanlab fold {k + 1}/{folds}", loss_fn=task.per_example_loss)
        p = predict_proba(model, train.subset(torch.as_tensor(held, dtype=torch.long)).inputs).double().numpy()
        probs = np.zeros((len(y), p.shape[1])) if probs is None else probs
        probs[held] = p
    assert probs is not None
    return probs


@SCORERS.register("cleanlab")
class Cleanlab(Scorer):
    """cfg: ``folds`` (default 5), ``epochs`` (default proxy.epochs), ``filter_by`` (default prune_by_noise_rate)."""

    needs: ClassVar[tuple[str, ...]] = ("proxy_config",)

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        from datasel.training.proxy import task_for_run

        cleanlab = import_cleanlab()
        if not inputs.proxy_cfg:
            raise ConfigError("scoring method 'cleanlab' trains proxies by the proxy section's recipe, and there is "
                              "none", field="proxy", fix="add a proxy: section (model, epochs, optimizer)")
        proxy = {**inputs.proxy_cfg, "epochs": int(self.cfg.get("epochs", inputs.proxy_cfg["epochs"]))}
        task = task_for_run(inputs.examples, inputs.meta, proxy["model"])
        train = task.split("train")
        probs = out_of_fold_probs(task, proxy, int(self.cfg.get("folds", 5)), inputs.seed, inputs.device)
        labels = train.labels.numpy()
        issues = cleanlab.filter.find_label_issues(labels, probs,
                                                   filter_by=self.cfg.get("filter_by", "prune_by_noise_rate"))
        quality = cleanlab.rank.get_label_quality_scores(labels, probs)
        log.info("cleanlab: %d of %d training labels flagged (estimated noise rate %.1f%%)", int(issues.sum()),
                 len(labels), 100 * issues.mean())
        return pl.DataFrame({"example_id": list(train.ids), "score": 1.0 - quality, "label_issue": issues,
                             "oof_accuracy": (probs.argmax(1) == labels).astype(np.float64)})
