"""Property-based tests: random tables, damaged files and random configs give either a clean result that meets every
invariant or a clean refusal (a DataselError naming file/field and fix; for configs, a short Snakemake error). Any
other exception, a traceback or an invariant break fails the test.

Runs are derandomized (the same examples every time, so CI is reproducible); DATASEL_FUZZ=<n> runs n fresh random
examples per fast test instead, to search harder locally.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from conftest import TINY, snakemake, write_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from datasel.data.prepare import build_examples
from datasel.errors import DataselError
from datasel.selection import POLICIES
from datasel.selection.base import kept_count
from datasel.selection.make import make_selection
from datasel.store import SCHEMAS, read_table, write_table

FUZZ = int(os.environ.get("DATASEL_FUZZ", "0"))
FAST = settings(max_examples=FUZZ or 60, deadline=None, derandomize=not FUZZ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def clean(err: DataselError) -> None:
    event(f"refused: {type(err).__name__} {err.field}")  # shown by --hypothesis-show-statistics
    assert err.fix, f"refusal without a fix: {err}"
    assert err.file is not None or err.field is not None, f"refusal without a location: {err}"
    assert "Traceback" not in str(err) and len(str(err)) < 800


# ---- selections from random score tables and random policy entries ----

def _examples(n_train: int, n_classes: int) -> pl.DataFrame:
    n = n_train + 4
    return pl.DataFrame({
        "example_id": [f"id{i:03d}" for i in range(n)],
        "source": ["t"] * n,
        "split": ["train"] * n_train + ["val", "val", "test", "test"],
        "label": [i % n_classes for i in range(n)],
        "label_orig": [i % n_classes for i in range(n)],
        "is_noisy": [False] * n,
    })


score_values = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))


@st.composite
def selection_case(draw):
    n_train = draw(st.integers(1, 40))
    ex = _examples(n_train, draw(st.integers(1, 4)))
    ids = ex.filter(pl.col("split") == "train").get_column("example_id").to_list()
    vals = draw(st.lists(st.floats(-1e3, 1e3), min_size=n_train, max_size=n_train))
    if draw(st.integers(0, 5)) == 0:  # occasionally poison one value
        vals[draw(st.integers(0, n_train - 1))] = draw(score_values)
    scores = pl.DataFrame({"example_id": ids, "score": vals})
    drop = draw(st.sampled_from([0] * 6 + [1, 2]))  # now and then a stale table that misses rows
    scores = scores.head(max(0, n_train - drop)).sort(["score", "example_id"], descending=[True, False],
                                                      nulls_last=True)
    scores = scores.with_columns(pl.lit("s").alias("method"), pl.int_range(1, scores.height + 1).alias("rank"))
    policy = draw(st.sampled_from(["top", "bottom", "offset", "random", "full", "shift_gsampling", "top", "offset",
                                   "nope"]))
    cfg = {"policy": policy, "score": "s", "stratify": draw(st.booleans())}
    if draw(st.booleans()):
        cfg["offset"] = draw(st.one_of(st.floats(-1, 1.5), st.integers(-2, 50)))
    if draw(st.booleans()):
        cfg["curriculum"] = {"order": draw(st.sampled_from(["easy_to_hard", "hard_to_easy", "random"])), "score": "s"}
    fraction = draw(st.floats(1e-3, 1.0) if draw(st.integers(0, 4)) else
                    st.one_of(st.floats(-0.2, 1.3), st.sampled_from([math.nan, 0.0, 1.0, 1e-9])))
    return ex, scores, cfg, fraction, draw(st.integers(0, 2**31 - 1))


@FAST
@given(selection_case())
def test_random_selections_are_valid_or_cleanly_refused(case):
    ex, scores, cfg, fraction, seed = case
    try:
        sel = make_selection(ex, scores, "p", cfg, fraction, seed, order_scores=scores)
    except DataselError as err:
        clean(err)
        return
    event("valid selection")
    n = ex.filter(pl.col("split") == "train").height
    assert 0 < fraction <= 1 and cfg["policy"] in POLICIES.names()
    with tempfile.TemporaryDirectory() as tmp:
        write_table(sel, Path(tmp) / "s.parquet", "selections")  # the table passes its schema
    assert sel.height == n and sel.get_column("example_id").is_unique().all()
    kept = sel.filter(pl.col("selected"))
    want = n if cfg["policy"] == "full" else kept_count(n, fraction)
    assert kept.height == want
    assert (kept.get_column("weight") > 0).all() and (sel.filter(~pl.col("selected")).get_column("weight") == 0).all()
    if cfg.get("curriculum"):
        assert sorted(kept.get_column("position").to_list()) == list(range(kept.height))
    ranked = scores.sort("rank").get_column("example_id").to_list()
    chosen = set(kept.get_column("example_id"))
    if not cfg["stratify"] and cfg["policy"] in ("top", "bottom"):
        # slow reference: the first / last M ids in rank order
        ref = ranked[:want] if cfg["policy"] == "top" else ranked[n - want:]
        assert chosen == set(ref)
    if not cfg["stratify"] and cfg["policy"] == "offset":
        off = cfg["offset"]
        start = min(int(round(off * n)) if off < 1 else int(off), n - want)
        assert chosen == set(ranked[start:start + want])
    again = make_selection(ex, scores, "p", cfg, fraction, seed, order_scores=scores)
    assert again.equals(sel)  # deterministic given the seed


# ---- random tables against every declared schema ----

DTYPES = [pl.Int64, pl.Int32, pl.Float64, pl.Float32, pl.String, pl.Boolean, pl.Null]


def _column(dtype: pl.DataType, n: int, rng: np.random.Generator) -> pl.Series:
    if dtype == pl.Null:
        return pl.Series([None] * n, dtype=pl.Null)
    if dtype == pl.String:
        return pl.Series([f"v{int(v)}" for v in rng.integers(0, 3, n)], dtype=pl.String)
    if dtype == pl.Boolean:
        return pl.Series(rng.integers(0, 2, n).astype(bool))
    if dtype.is_integer():
        return pl.Series(rng.integers(-5, 5, n)).cast(dtype)
    return pl.Series(rng.normal(size=n)).cast(dtype)


@FAST
@given(schema=st.sampled_from(sorted(SCHEMAS)), data=st.data())
def test_random_tables_read_as_their_schema_or_are_refused(tmp_path, schema, data):
    spec = SCHEMAS[schema]
    n = data.draw(st.integers(0, 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    cols = {}
    for name, dtype in spec.columns.items():
        if data.draw(st.integers(0, 9)) == 0:
            continue  # a missing column
        cols[name] = _column(dtype if data.draw(st.integers(0, 3)) else data.draw(st.sampled_from(DTYPES)), n, rng)
    if data.draw(st.booleans()):
        cols["extra"] = _column(data.draw(st.sampled_from(DTYPES)), n, rng)
    path = tmp_path / f"{schema}.parquet"
    pl.DataFrame(cols).write_parquet(path)
    try:
        df = read_table(path, schema)
    except DataselError as err:
        clean(err)
        assert err.field is not None and str(path) in str(err)
        return
    event("valid table")
    for name, dtype in spec.columns.items():
        assert df.schema[name] == dtype
    for key in spec.unique:
        # a composite key ("draw+example_id") is unique as a tuple; an optional part the table lacks drops out
        parts = [p for p in key.split("+") if p in df.columns]
        assert not df.select(pl.struct(parts).is_duplicated()).to_series().any()


@settings(max_examples=FUZZ or 40, deadline=None, derandomize=not FUZZ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_damaged_parquet_reads_or_is_refused(tmp_path, cut, flips):
    path = tmp_path / "scores.parquet"
    n = 50
    write_table(pl.DataFrame({"example_id": [f"e{i}" for i in range(n)], "method": ["m"] * n,
                              "score": np.linspace(0, 1, n), "rank": list(range(1, n + 1))}), path, "scores")
    data = bytearray(path.read_bytes())
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    data = data[: max(0, int(cut * len(data)))] if cut < 0.999 else data
    path.write_bytes(bytes(data))
    try:
        df = read_table(path, "scores")
    except DataselError as err:
        clean(err)
        return
    event("damaged file still read")
    assert df.height <= n and df.schema["score"] == pl.Float64


# ---- random user data files ----

@st.composite
def user_frame(draw):
    n = draw(st.integers(0, 25))
    vals = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf]))
    f1 = draw(st.lists(vals if draw(st.booleans()) else st.floats(-10, 10), min_size=n, max_size=n))
    label_kind = draw(st.sampled_from(["int", "int", "int", "str", "str", "float", "null", "neg"]))
    ints = draw(st.lists(st.integers(0, draw(st.integers(1, 3))), min_size=n, max_size=n))
    label = {"int": ints, "str": [f"c{i}" for i in ints], "float": [i + 0.5 for i in ints],
             "null": [None if i == 0 else i for i in ints], "neg": [i - 1 for i in ints]}[label_kind]
    frame = pl.DataFrame({"f1": pl.Series(f1, dtype=pl.Float64), "f2": pl.Series(ints, dtype=pl.Float64),
                          "cls": label})
    cfg = {"source": "files", "label_column": "cls", "feature_columns": ["f1", "f2"]}
    if draw(st.booleans()):
        cfg["num_classes"] = draw(st.integers(2, 5))
    if draw(st.booleans()):
        cfg["noise"] = {"fraction": draw(st.floats(0, 0.9)), "seed": 0}
    return frame, cfg


@FAST
@given(user_frame())
def test_random_user_data_builds_a_valid_examples_table_or_is_refused(tmp_path, case):
    frame, cfg = case
    path = tmp_path / "mine.parquet"
    frame.write_parquet(path)
    try:
        df, meta = build_examples({**cfg, "path": str(path)})
    except DataselError as err:
        clean(err)
        return
    event("valid examples")
    SCHEMAS["examples"].validate(df, path)
    assert df.height == frame.height and df.get_column("example_id").is_unique().all()
    assert set(df.get_column("split")) <= {"train", "val", "test"}
    labels = df.get_column("label")
    assert labels.min() >= 0 and labels.max() < meta["num_classes"]
    assert np.isfinite(np.array(df.get_column("x").to_list(), dtype=np.float64)).all()


# ---- random configs through the whole workflow's checks (dry runs: no job is started) ----

SLOTS = [("data", "source"), ("data", "noise"), ("proxy", "epochs"), ("proxy", "checkpoints"), ("proxy", "seeds"),
         ("proxy", "model"), ("scoring", "el2n"), ("selection", "fractions"), ("selection", "policies"),
         ("training", "budget"), ("training", "seeds"), ("training", "batch_size"), ("stages", None)]
WEIRD = st.sampled_from([None, -1, 0, 1, 2.5, "x", "", [], [0], [1.5], {}, {"policy": "top"}, True, [0, 1, 3]])
# values of the right type that the schema lets through: the cross-section checks (or the run) must handle them
PLAUSIBLE = {
    ("data", "noise"): [{"fraction": 0.5, "seed": 1}, {"fraction": 0.0}],
    ("proxy", "checkpoints"): [[0, 3], [1], [0, 1, 3, 7]],
    ("proxy", "model"): [{"name": "cnn1d", "channels": 4}, {"name": "nope"}],
    ("scoring", "el2n"): [{"method": "el2n", "epoch": 2}, {"method": "grand", "epoch": 3}, {"method": "loss"}],
    ("selection", "fractions"): [[0.1, 1.0], [1.0], [0.333]],
    ("selection", "policies"): [{"a": {"policy": "offset", "score": "nope"}},
                                {"b": {"policy": "bottom", "score": "grand"}},
                                {"c": {"policy": "top", "score": "el2n", "curriculum": {"score": "missing"}}}],
    ("training", "seeds"): [[7], [0, 0]],
    ("stages", None): [["selection"], ["selection", "features"], ["selectoin"]],
}


@st.composite
def config_edit(draw):
    slot = draw(st.sampled_from(SLOTS))
    if slot in PLAUSIBLE and draw(st.booleans()):
        return slot, draw(st.sampled_from(PLAUSIBLE[slot]))
    return slot, draw(WEIRD)


@settings(max_examples=max(8, FUZZ // 20), deadline=None, derandomize=not FUZZ)
@given(edits=st.lists(config_edit(), min_size=1, max_size=2))
def test_random_configs_dry_run_cleanly_or_are_refused_cleanly(edits):
    cfg = copy.deepcopy(TINY)
    for (section, key), value in edits:
        if key is None:
            cfg[section] = value
        else:
            cfg[section][key] = value
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_config(work, cfg)
        proc = snakemake(work, "-n", check=False, timeout=300)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, text[-3000:]
        if proc.returncode == 0:
            event("dry run ok")
        if proc.returncode != 0:
            # a refusal names the config field (schema error or datasel's cross-section check)
            schema = "ValidationError" in text and "On instance" in text  # the schema names the failing path
            # datasel.config's schema checks (file / field) and common.smk's cross-section checks (config field)
            ours = ("config field" in text or "field '" in text) and "fix:" in text
            assert schema or ours, text[-3000:]
            event("refused by the schema" if schema else "refused by a cross-section check")
        assert not (work / "results").exists()
