"""Which jobs an edit of one config key reruns, for every key of the default config.

Snakemake reruns a job whose recorded `params:` differ from the current ones, so a rule's params must carry only
the config its outputs depend on. Here a finished run of config/config.yaml is faked with `--touch` (no job runs:
Snakemake records every job's params, then the outputs are created), and each edit is a dry run in this process
against it. The table below says, by hand, which jobs each edit must rerun.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

# the default config: 5 proxy seeds, 5 scores, 5 policies x 3 fractions + full_keep100 = 16 selections (12 of them
# read a score: el2n_top, el2n_offset, grand_offset, grand_init_offset), one training job per selection
DOWN = {"report": 1, "catalog": 1}
FROM_PROXY = {"proxy": 5, "score": 5, "select": 12, "train": 12, **DOWN}
EVERYTHING = {"prepare": 1, **FROM_PROXY, "select": 16, "train": 16}
TRAINING = {"train": 16, **DOWN}
NOTHING: dict[str, int] = {}


def _score(selections: int) -> dict[str, int]:
    """One score table and the selections (x 3 fractions) that read it."""
    return {"score": 1, **({"select": selections, "train": selections} if selections else {}), **DOWN}


POLICY = {"select": 3, "train": 3, **DOWN}  # one policy entry: its three kept fractions

class Entry(dict):
    """An edit of a key together with its siblings (a new method or policy that takes other keys); None drops one."""


# key -> (new value, jobs per rule that must rerun)
RERUNS: dict[str, tuple[object, dict[str, int]]] = {
    # how jobs run, not what they compute
    "compute.threads": (2, NOTHING),
    "compute.device": ("cpu", NOTHING),
    "compute.progress": (False, NOTHING),
    "compute.jobs.default.runtime": (90, NOTHING),
    "compute.jobs.default.mem_mb": (8000, NOTHING),
    "compute.jobs.gpu": ({"slurm_partition": "gpu"}, NOTHING),
    "data.source": ("digits", EVERYTHING),
    "data.mnist1d.num_samples": (2000, EVERYTHING),
    "data.mnist1d.seed": (7, EVERYTHING),
    "data.splits.val": (0.15, EVERYTHING),
    "data.splits.test": (0.25, EVERYTHING),
    "data.splits.seed": (1, EVERYTHING),
    "data.noise.fraction": (0.1, EVERYTHING),
    "data.noise.seed": (1, EVERYTHING),
    # one more proxy seed: that seed's run only, then every score (each averages over the seeds)
    "proxy.seeds": (6, {**FROM_PROXY, "proxy": 1}),
    "proxy.model.name": ("mlp", FROM_PROXY),
    "proxy.model.channels": (16, FROM_PROXY),
    "proxy.epochs": (12, FROM_PROXY),
    # a checkpoint no score or feature set reads is not asked for: it is written once one does (its file is missing)
    "proxy.checkpoints": ([0, 2, 5, 10], NOTHING),
    "proxy.batch_size": (64, FROM_PROXY),
    "proxy.optimizer": ("sgd", FROM_PROXY),
    "proxy.lr": (0.01, FROM_PROXY),
    "proxy.weight_decay": (0.01, FROM_PROXY),
    "proxy.schedule": ("constant", FROM_PROXY),
    "scoring.el2n.method": ("loss", _score(6)),  # el2n_top, el2n_offset
    "scoring.el2n.epoch": (10, _score(6)),
    "scoring.grand.method": (Entry(method="el2n", params=None), _score(3)),  # el2n takes no `params`
    "scoring.grand.epoch": (10, _score(3)),
    "scoring.grand.params": ("last_layer", _score(3)),
    "scoring.grand_init.method": (Entry(method="el2n", params=None), _score(3)),
    "scoring.grand_init.epoch": (5, _score(3)),
    "scoring.grand_init.params": ("last_layer", _score(3)),
    "scoring.grand_last_layer.method": (Entry(method="el2n", params=None), _score(0)),  # no policy reads it: its table and the report
    "scoring.grand_last_layer.epoch": (10, _score(0)),
    "scoring.grand_last_layer.params": ("all", _score(0)),
    "scoring.loss.method": ("el2n", _score(0)),
    "scoring.loss.epoch": (10, _score(0)),
    # one more kept fraction: its five selections, not the fifteen there are
    "selection.fractions": ([0.3, 0.5, 0.7, 0.9], {"select": 5, "train": 5, **DOWN}),
    # every selection job takes the seed (random draws, stratified splits, curriculum ties)
    "selection.seed": (1, {"select": 16, "train": 16, **DOWN}),
    "selection.policies.el2n_top.policy": ("bottom", POLICY),
    "selection.policies.el2n_top.score": ("loss", POLICY),
    "selection.policies.el2n_offset.policy": (Entry(policy="top", offset=None), POLICY),
    "selection.policies.el2n_offset.score": ("loss", POLICY),
    "selection.policies.el2n_offset.offset": (0.2, POLICY),
    "selection.policies.grand_offset.policy": (Entry(policy="top", offset=None), POLICY),
    "selection.policies.grand_offset.score": ("loss", POLICY),
    "selection.policies.grand_offset.offset": (0.2, POLICY),
    "selection.policies.grand_init_offset.policy": (Entry(policy="top", offset=None), POLICY),
    "selection.policies.grand_init_offset.score": ("loss", POLICY),
    "selection.policies.grand_init_offset.offset": (0.2, POLICY),
    "training.model.name": ("mlp", TRAINING),
    "training.model.channels": (16, TRAINING),
    # one job per selection trains all its seeds; random draws one subset per training seed, so its three
    # selections gain the new seed's draw (the deterministic policies' do not change)
    "training.seeds": ([0, 1, 2, 3], {**TRAINING, "select": 3}),
    "training.budget.unit": ("epochs", TRAINING),
    "training.budget.value": (1000, TRAINING),
    "training.batch_size": (64, TRAINING),
    "training.optimizer": ("sgd", TRAINING),
    "training.lr": (0.01, TRAINING),
    "training.weight_decay": (0.01, TRAINING),
    "training.schedule": ("constant", TRAINING),
}
# `stages` names what is built rather than how: editing it adds or drops targets, which no params decide
# and the entry named `random` must stay `policy: random` (the baseline of every margin)
NOT_PARAMS = {"stages", "selection.policies.random.policy"}


def _leaves(cfg: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        out |= _leaves(value, f"{path}.") if isinstance(value, dict) and value else {path}
    return out


def _set(cfg: dict, key: str, value: object) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if isinstance(value, Entry):
        assert node[last] != value[last], f"{key}: the edit must change the value"
        for k, v in value.items():
            if v is None:
                del node[k]
            else:
                node[k] = v
        return cfg
    assert node[last] != value, f"{key}: the edit must change the value"
    node[last] = value
    return cfg


class _Stats(logging.Handler):
    """Snakemake's job-count record of a run (None when there is nothing to do)."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "stats", None) is not None:
            self.stats = dict(record.stats)


def _run(work: Path, executor: str) -> dict[str, int]:
    """Jobs per rule that a run of work/config.yaml has to do (`dryrun`), or does (`touch`), in this process."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    grab, log = _Stats(), logging.getLogger("snakemake.logging")
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            log.addHandler(grab)
            wf = api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[work / "config.yaml"]),
                              snakefile=ROOT / "Snakefile", workdir=work)
            wf.dag(DAGSettings()).execute_workflow(executor=executor)
    finally:
        log.removeHandler(grab)
        os.chdir(cwd)
    return {k: v for k, v in (grab.stats or {}).items() if k not in ("all", "total")}


def _finished_run(work: Path, cfg: dict) -> Path:
    """A run folder whose every output exists and whose Snakemake records hold ``cfg``'s params."""
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _run(work, "touch")  # records each job's params (its outputs missing: none is written)
    now = time.time()  # newer than the scripts, or Snakemake would see changed code
    for key in os.listdir(work / ".snakemake" / "metadata"):
        out = work / base64.b64decode(key).decode()
        out.parent.mkdir(parents=True, exist_ok=True)
        if "/shard_" in str(out):
            out.mkdir(exist_ok=True)  # a feature shard is a directory output
        else:
            out.touch()
        os.utime(out, (now, now))
    assert _run(work, "dryrun") == NOTHING
    return work


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("params"), DEFAULT)


def test_the_table_names_every_key_of_the_default_config():
    assert set(RERUNS) | NOT_PARAMS == _leaves(DEFAULT)


@pytest.mark.parametrize("key", sorted(RERUNS))
def test_editing_one_key_reruns_only_what_depends_on_it(finished, key):
    value, expected = RERUNS[key]
    (finished / "config.yaml").write_text(yaml.safe_dump(_set(DEFAULT, key, value), sort_keys=False))
    try:
        jobs = _run(finished, "dryrun")
    finally:
        (finished / "config.yaml").write_text(yaml.safe_dump(DEFAULT, sort_keys=False))
    assert jobs == expected


def test_reordering_keys_in_the_config_file_reruns_nothing(finished):
    def reverse(node):
        return {k: reverse(node[k]) for k in reversed(list(node))} if isinstance(node, dict) else node

    (finished / "config.yaml").write_text(yaml.safe_dump(reverse(DEFAULT), sort_keys=False))
    try:
        assert _run(finished, "dryrun") == NOTHING
    finally:
        (finished / "config.yaml").write_text(yaml.safe_dump(DEFAULT, sort_keys=False))


# A features section (gradient features of proxy checkpoints) read by a k-center policy: a shard is one
# checkpoint's split, so the lists of seeds and splits a set spans decide which shards exist, not what one holds.
WITH_FEATURES = copy.deepcopy(DEFAULT)
WITH_FEATURES["stages"] = ["selection", "features"]  # every set's indexes are targets
WITH_FEATURES["features"] = {"shards": 2, "sets": {"g": {"model": "proxy", "seeds": [0], "epochs": [5],
                                                         "splits": ["train", "val"], "dim": 64}}}
WITH_FEATURES["selection"]["policies"]["cover"] = {"policy": "kcenter", "features": "g"}
FEATURE_READERS = {"select": 3, "train": 3, **DOWN}  # the cover policy's three fractions
FEATURE_RERUNS: dict[str, tuple[object, dict[str, int]]] = {
    # seed 1's shards and indexes only (the policy reads the first seed's training index); the catalog lists them
    "features.sets.g.seeds": ([0, 1], {"features_shard": 4, "features_gather": 2, "catalog": 1}),
    "features.sets.g.splits": (["train", "val", "test"], {"features_shard": 2, "features_gather": 1, "catalog": 1}),
    "features.sets.g.dim": (32, {"features_shard": 4, "features_gather": 2, **FEATURE_READERS}),
    "features.shards": (3, {"features_shard": 6, "features_gather": 2, **FEATURE_READERS}),
}


@pytest.fixture(scope="module")
def finished_features(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("params_features"), WITH_FEATURES)


@pytest.mark.parametrize("key", sorted(FEATURE_RERUNS))
def test_editing_a_feature_set_reruns_only_its_own_shards(finished_features, key):
    value, expected = FEATURE_RERUNS[key]
    path = finished_features / "config.yaml"
    path.write_text(yaml.safe_dump(_set(WITH_FEATURES, key, value), sort_keys=False))
    try:
        assert _run(finished_features, "dryrun") == expected
    finally:
        path.write_text(yaml.safe_dump(WITH_FEATURES, sort_keys=False))
