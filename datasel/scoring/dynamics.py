"""Scores from the proxy runs' training dynamics (``proxy/seed<k>/epochs.parquet``, :mod:`datasel.training.dynamics`).

``forgetting`` (Toneva et al. 2019): per example, the number of forgetting events — presentations at which it is
misclassified after being classified correctly at its previous presentation. An example never classified correctly
counts as forgotten more often than any learned one can be (the paper: infinitely often); a finite score is needed
for ranking, so it gets T, the number of presentations (a learned example has at most ⌊T/2⌋ events).
High = forgettable (hard or mislabeled); unforgettable examples (0) are the ones the paper prunes first.

``aum`` (Pleiss et al. 2020): the area under the margin, the mean over epochs of (assigned-class logit − largest
other logit) at presentation. Low (negative) AUM flags mislabeled examples, so the score is **−AUM** (high = likely
mislabeled, as for EL2N and loss); the raw AUM is kept in column ``aum``.

Both are means over the K proxy runs, with ``score_std`` their spread across runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from datasel.errors import DataError
from datasel.scoring.base import SCORERS, ScoreInputs, Scorer
from datasel.store import read_table


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """(N, T) correctness at each presentation → (N,) forgetting counts, T for never-learned rows."""
    c = np.asarray(correct, dtype=bool)
    events = (c[:, :-1] & ~c[:, 1:]).sum(1).astype(np.float64)
    events[~c.any(1)] = c.shape[1]
    return events


def area_under_margin(margin: np.ndarray) -> np.ndarray:
    """(N, T) margins at each presentation → (N,) mean margin."""
    return np.asarray(margin, dtype=np.float64).mean(1)


def epoch_arrays(path: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The (N, T) correct and margin arrays of one proxy run, rows in ``ids`` order; refuses a table that does not
    hold every training example at every epoch."""
    table = read_table(path, "proxy_epochs")
    epochs = sorted(table.get_column("epoch").unique().to_list())
    want = pl.DataFrame({"example_id": ids}).with_row_index("row")
    joined = table.join(want, on="example_id", how="inner")
    if joined.height != len(ids) * len(epochs) or joined.select("row").n_unique() != len(ids):
        raise DataError(f"the table holds {joined.height} rows for the {len(ids)} training examples, expected one per "
                        f"example and epoch ({len(ids)} × {len(epochs)})", file=path, field="example_id",
                        fix="rerun the proxy step on the current examples table (delete results/proxy)")
    joined = joined.sort("row", "epoch")
    shape = (len(ids), len(epochs))
    return (joined.get_column("correct").to_numpy().reshape(shape),
            joined.get_column("margin").to_numpy().astype(np.float64).reshape(shape))


class DynamicsScorer(Scorer):
    """A per-example statistic of the recorded training dynamics, averaged over the proxy runs."""

    needs: ClassVar[tuple[str, ...]] = ("proxy_epochs",)

    def per_run(self, correct: np.ndarray, margin: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def extra_columns(self, mean: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        if not inputs.epoch_tables:
            raise DataError("no proxy epoch tables were given", field="scoring",
                            fix="set proxy.seeds >= 1 (the proxy step writes proxy/seed<k>/epochs.parquet)")
        ids = (read_table(inputs.examples, "examples").filter(pl.col("split") == "train")
               .get_column("example_id").sort().to_list())
        runs = np.stack([self.per_run(*epoch_arrays(p, ids)) for p in inputs.epoch_tables])
        mean = runs.mean(0)
        return pl.DataFrame({"example_id": ids, "score": mean,
                             "score_std": runs.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(ids)),
                             **self.extra_columns(mean)})


@SCORERS.register("forgetting")
class Forgetting(DynamicsScorer):
    def per_run(self, correct: np.ndarray, margin: np.ndarray) -> np.ndarray:
        return forgetting_events(correct)


@SCORERS.register("aum")
class AUM(DynamicsScorer):
    def per_run(self, correct: np.ndarray, margin: np.ndarray) -> np.ndarray:
        return -area_under_margin(margin)

    def extra_columns(self, mean: np.ndarray) -> dict[str, np.ndarray]:
        return {"aum": -mean}
