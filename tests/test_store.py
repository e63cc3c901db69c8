"""The feature store: resumable shards with identical bytes after a kill, refusal of corrupt or mismatched shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasel.errors import DataError
from datasel.features.compute import featurize
from datasel.features.store import FeatureSet, FeatureShard, ShardWriter, features_for, gather

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)

SETUP = """
import torch
from datasel.models import build_model
torch.manual_seed(0)
MODEL = build_model({"name": "mlp", "hidden": [32]}, {"input_dim": 40, "num_classes": 10})
g = torch.Generator().manual_seed(1)
X = torch.randn(300, 40, generator=g)
Y = torch.randint(0, 10, (300,), generator=g)
IDS = [f"ex{i:04d}" for i in range(300)]
CFG = {"dim": 64, "seed": 5, "chunk_size": 20, "projector": "rademacher"}
IDENT = {"model": "mlp", "checkpoint": "synthetic", "split": "train"}
"""

WORKER = SETUP + """
import sys, time
from datasel.features.compute import featurize
featurize(MODEL, X, Y, sys.argv[1], CFG, ids=IDS, identity=IDENT, on_chunk=lambda s, e: time.sleep(0.15))
"""


def _setup() -> dict:
    ns: dict = {}
    exec(SETUP, ns)
    return ns


def test_killed_shard_resumes_to_identical_bytes(tmp_path: Path) -> None:
    ns = _setup()
    clean = tmp_path / "clean"
    featurize(ns["MODEL"], ns["X"], ns["Y"], clean, ns["CFG"], ids=ns["IDS"], identity=ns["IDENT"])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(killed)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed / "done.u8").exists():
            done = int(np.fromfile(killed / "done.u8", dtype=np.uint8).sum())
            if 40 <= done:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(np.fromfile(killed / "done.u8", dtype=np.uint8).sum())
    assert 0 < done < 300, done  # really killed halfway
    assert not json.loads((killed / "meta.json").read_text()).get("complete")
    with pytest.raises(DataError, match="incomplete"):
        FeatureShard.open(killed)
    computed = []
    featurize(ns["MODEL"], ns["X"], ns["Y"], killed, ns["CFG"], ids=ns["IDS"], identity=ns["IDENT"],
              on_chunk=lambda s, e: computed.append(s))
    assert len(computed) < 15  # resumed: only the chunks not done were computed
    assert (killed / "features.f16").read_bytes() == (clean / "features.f16").read_bytes()
    assert json.loads((killed / "meta.json").read_text()) == json.loads((clean / "meta.json").read_text())


def test_reader_streams_and_matches_projection(tmp_path: Path) -> None:
    ns = _setup()
    featurize(ns["MODEL"], ns["X"][:50], ns["Y"][:50], tmp_path / "s0", ns["CFG"], ids=ns["IDS"][:50],
              identity=ns["IDENT"])
    featurize(ns["MODEL"], ns["X"][50:90], ns["Y"][50:90], tmp_path / "s1", ns["CFG"], ids=ns["IDS"][50:90],
              identity=ns["IDENT"])
    whole = tmp_path / "whole"
    featurize(ns["MODEL"], ns["X"][:90], ns["Y"][:90], whole, {**ns["CFG"], "chunk_size": 90}, ids=ns["IDS"][:90],
              identity=ns["IDENT"])
    index = gather([tmp_path / "s0", tmp_path / "s1"], tmp_path / "index.json")
    fs = FeatureSet.open(index)
    assert fs.rows == 90 and fs.dim == 64 and fs.ids() == ns["IDS"][:90]
    chunks = list(fs.iter_chunks(chunk_rows=16))
    assert max(len(c) for c in chunks) == 16
    got = np.concatenate(chunks)
    ref = FeatureShard.open(whole).memmap().astype(np.float32)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-4)  # float16 storage
    assert np.abs(got).max() > 0
    sub = features_for(index, ["ex0060", "ex0003"])
    np.testing.assert_array_equal(sub, got[[60, 3]])
    with pytest.raises(DataError, match="no gradient features"):
        features_for(index, ["nope"])


def test_mismatched_shard_is_refused(tmp_path: Path) -> None:
    ns = _setup()
    shard = tmp_path / "s"
    featurize(ns["MODEL"], ns["X"][:30], ns["Y"][:30], shard, ns["CFG"], ids=ns["IDS"][:30], identity=ns["IDENT"])
    meta = FeatureShard.open(shard).meta
    for key, value in [("dim", 32), ("seed", 6)]:
        with pytest.raises(DataError, match=f"{key}=") as err:
            FeatureShard.open(shard, expect={**meta, key: value})
        assert err.value.field == key and err.value.fix
    # resuming into a shard made with another seed/dimension is refused, not silently mixed
    for change in [{"seed": 6}, {"dim": 32}]:
        with pytest.raises(DataError, match="different settings"):
            featurize(ns["MODEL"], ns["X"][:30], ns["Y"][:30], shard, {**ns["CFG"], **change}, ids=ns["IDS"][:30],
                      identity=ns["IDENT"])
    # gathering shards of different seeds is refused
    other = tmp_path / "o"
    featurize(ns["MODEL"], ns["X"][30:40], ns["Y"][30:40], other, {**ns["CFG"], "seed": 6}, ids=ns["IDS"][30:40],
              identity=ns["IDENT"])
    with pytest.raises(DataError, match="disagrees"):
        gather([shard, other], tmp_path / "index.json")


def test_corrupted_shard_is_refused(tmp_path: Path) -> None:
    ns = _setup()
    shard = tmp_path / "s"
    featurize(ns["MODEL"], ns["X"][:30], ns["Y"][:30], shard, ns["CFG"], ids=ns["IDS"][:30], identity=ns["IDENT"])
    index = gather([shard], tmp_path / "index.json")
    feat = shard / "features.f16"
    data = bytearray(feat.read_bytes())
    data[100] ^= 0xFF
    feat.write_bytes(bytes(data))
    FeatureShard.open(shard)  # sizes still fit: only the checksum can tell
    with pytest.raises(DataError, match="checksum"):
        FeatureShard.open(shard, verify=True)
    with pytest.raises(DataError, match="checksum"):
        gather([shard], tmp_path / "index2.json")
    feat.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="truncated"):
        FeatureSet.open(index)
    (shard / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt meta.json"):
        FeatureShard.open(shard)


def test_writer_refuses_non_finite_and_bad_shapes(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "s", {"dim": 4}, ["a", "b"], 2)
    with pytest.raises(DataError, match="non-finite"):
        w.write(0, np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(DataError, match="does not fit"):
        w.write(1, np.zeros((2, 4)))
    with pytest.raises(DataError, match="ids for"):
        ShardWriter(tmp_path / "t", {"dim": 4}, ["a"], 2)
