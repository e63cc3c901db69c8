"""Multi-domain data generators: MNIST-1D generator settings and Python-stdlib text domains."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

os.environ["DATASEL_PROGRESS"] = "0"

from datasel.data.domains import build_domain_examples, mnist1d_domains, stdlib_text_domains
from datasel.errors import ConfigError
from datasel.mixing.task import build_task
from datasel.store import SCHEMAS

SMALL = {"per_domain": 60, "n_specific": 20, "n_specific_test": 40, "seed": 0}


@pytest.fixture(scope="module")
def mnist():
    return mnist1d_domains(SMALL)


def test_mnist1d_domains_shape_and_schema(mnist):
    df, meta = mnist
    SCHEMAS["examples"].validate(df, "mnist1d_domains")
    sizes = {(d, s): n for d, s, n in df.group_by("domain", "split").len().iter_rows()}
    assert sizes[("target", "train")] == 20 and sizes[("target", "test")] == 40
    assert all(sizes[(d, "train")] == 60 for d in meta["domains"])
    assert set(meta["domains"]) == {"clean", "shift", "scale", "iid_noise", "corr_noise", "shear"}
    assert meta["input_dim"] == 40 and meta["num_classes"] == 10


def test_mnist1d_domains_differ_by_their_setting(mnist):
    df, _ = mnist

    def stat(dom, fn):
        x = np.asarray(df.filter(pl.col("domain") == dom)["x"].to_list())
        return fn(x)

    rough = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731  high-frequency energy
    assert stat("iid_noise", rough) > 1.5 * stat("clean", rough)
    # a large shift moves the digit's peak around: its position varies more than in the clean domain
    peak_spread = lambda x: np.abs(x).argmax(1).std()  # noqa: E731
    assert stat("shift", peak_spread) > stat("clean", peak_spread)


def test_mnist1d_domains_are_deterministic(mnist):
    df, _ = mnist
    again, _ = mnist1d_domains(SMALL)
    assert df["example_id"].to_list() == again["example_id"].to_list()
    other, _ = mnist1d_domains({**SMALL, "seed": 1})
    assert set(df["example_id"]).isdisjoint(set(other["example_id"]))


def test_mnist1d_domains_bad_settings():
    with pytest.raises(ConfigError, match="unknown MNIST-1D"):
        mnist1d_domains({**SMALL, "domains": {"weird": {"colour": 3}}})
    with pytest.raises(ConfigError, match="no generic domains"):
        mnist1d_domains({**SMALL, "domains": {}})
    with pytest.raises(ConfigError, match="also a generic"):
        mnist1d_domains({**SMALL, "domains": {"target": {}}})
    with pytest.raises(ConfigError, match="source"):
        build_domain_examples({"source": "nope"})


@pytest.fixture(scope="module")
def text():
    return stdlib_text_domains({"per_domain": 50, "n_specific": 10, "n_specific_test": 20, "chunk_len": 33,
                                "max_files": 80})


def test_text_domains_shape_and_vocab(text):
    df, meta = text
    SCHEMAS["examples"].validate(df, "stdlib_text")
    assert set(df["domain"]) == {"code", "comments", "docstrings", "tests", "docs", "sessions"}
    assert (df["text"].str.len_chars() == 33).all()
    assert meta["block_size"] == 32 and meta["vocab_size"] == len(meta["vocab"]) <= 96
    task = build_task(df, meta, {})
    assert task.spe_x.shape == (10, 32) and task.eval_y.shape == (20, 32)
    # next-character targets are the inputs shifted by one
    assert (task.xs[0][:, 1:] == task.ys[0][:, :-1]).all()


def test_text_domains_are_distinct_and_do_not_leak(text):
    df, _ = text
    by = {d: "".join(df.filter(pl.col("domain") == d)["text"]) for d in df["domain"].unique()}
    assert by["sessions"].count(">>>") > 10
    assert all(by[d].count(">>>") == 0 for d in ("docstrings", "docs"))
    assert by["code"].count("def ") + by["code"].count("self") > by["docs"].count("def ") + by["docs"].count("self")
    spe_test = set(df.filter((pl.col("domain") == "sessions") & (pl.col("split") == "test"))["text"])
    assert spe_test.isdisjoint(set(df.filter(pl.col("domain") != "sessions")["text"]))


def test_text_domains_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="text domains"):
        stdlib_text_domains({"domains": ["poetry"]})
    with pytest.raises(Exception, match="does not exist"):
        stdlib_text_domains({"stdlib": str(tmp_path / "missing")})


def test_unequal_domain_sizes():
    df, _ = mnist1d_domains({**SMALL, "per_domain": {"clean": 30, "shift": 10, "scale": 5, "iid_noise": 5,
                                                     "corr_noise": 5, "shear": 5}})
    sizes = dict(df.filter(pl.col("split") == "train").group_by("domain").len().iter_rows())
    assert sizes["clean"] == 30 and sizes["shift"] == 10 and sizes["target"] == 20
    with pytest.raises(ConfigError, match="no size"):
        mnist1d_domains({**SMALL, "per_domain": {"clean": 30}})
