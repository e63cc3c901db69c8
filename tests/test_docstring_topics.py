"""The builtin text source ``docstring_topics``: deterministic rows, its options, its export, and text.yaml."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from datasel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# two small standard-library packages keep the mining fast
SMALL = {"source": "docstring_topics", "docstring_topics": {"packages": ["json", "http"], "per_class": 8},
         "splits": {"val": 0.25, "test": 0.25}}


def test_builtin_source_is_deterministic_text_data():
    from datasel.data.prepare import build_examples

    (a, meta), (b, _) = build_examples(SMALL), build_examples(SMALL)
    assert a.equals(b)  # same ids, texts, labels and splits on every call
    assert meta["kind"] == "text" and meta["classes"] == ["http", "json"]
    assert a.group_by("label").len().get_column("len").to_list() == [8, 8]
    assert a.get_column("example_id").n_unique() == a.height and a.get_column("text").n_unique() == a.height
    # the miner's origin (package/module:name:line) is kept, and names the package of the row's label
    origin_pkg = a.get_column("origin").str.split("/").list.first()
    assert origin_pkg.to_list() == [meta["classes"][i] for i in a.get_column("label").to_list()]
    assert set(a.get_column("split")) == {"train", "val", "test"}


def test_seed_draws_another_sample_of_the_same_population():
    from datasel.data.sources import load_source

    one = load_source(SMALL)
    other = load_source({**SMALL, "docstring_topics": {**SMALL["docstring_topics"], "seed": 1}})
    assert one.height == other.height and set(one.get_column("origin")) != set(other.get_column("origin"))


def test_missing_package_is_refused_by_field():
    from datasel.data.sources import load_source

    with pytest.raises(ConfigError) as err:
        load_source({"source": "docstring_topics", "docstring_topics": {"packages": ["json", "no_such_pkg_xyz"]}})
    assert err.value.field == "data.docstring_topics.packages" and "no_such_pkg_xyz" in str(err.value)


def test_module_export_writes_the_sources_rows(tmp_path, capsys):
    from datasel.data.docstring_topics import main
    from datasel.data.sources import load_source

    out = tmp_path / "d.jsonl"
    main([str(out), "--packages", "json", "http", "--per-class", "8"])
    written = pl.read_ndjson(out)
    assert written.rename({"id": "origin"}).equals(load_source(SMALL).select("origin", "text", "label"))
    assert "16 examples" in capsys.readouterr().out


def test_text_experiment_config_validates_and_needs_no_data_file():
    from datasel.config import data_inputs, load_config

    cfg = load_config([ROOT / "config" / "experiments" / "text.yaml"]).config
    data = cfg["data"]
    assert data["source"] == "docstring_topics" and data_inputs(data) == []
    per_class = data["docstring_topics"]["per_class"]
    assert per_class * 6 >= 5000  # the experiment's size: at least 5,000 examples in at least 5 classes
    assert {"el2n", "grand", "loss"} <= {e["method"] for e in cfg["scoring"].values()}
    assert len(cfg["selection"]["fractions"]) == 3 and len(cfg["training"]["seeds"]) == 3
