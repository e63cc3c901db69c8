"""Text classification end to end: a jsonl file and a ``save_to_disk`` folder through prepare → proxy (LoRA) →
EL2N / GraNd (all, last layer, LoRA) / loss → select → train (full fine-tuning) → report → export, on a tiny
random-init BERT; and the clear refusals of a missing model or tokenizer folder."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import snakemake, write_config
from text_fixtures import corpus, tiny_bert

from datasel.errors import ConfigError


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    return tiny_bert(folder, corpus().get_column("sentence").to_list())


def _config(data: dict, bert_path: str) -> dict:
    model = {"name": "hf_classifier", "path": bert_path, "max_length": 16}
    return {
        "stages": ["selection"],
        "data": data,
        "proxy": {"seeds": 2, "model": {**model, "lora": {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}},
                  "epochs": 2, "checkpoints": [0, 1, 2], "batch_size": 16, "lr": 0.003},
        "scoring": {"el2n": {"method": "el2n", "epoch": 1}, "grand": {"method": "grand", "epoch": 1, "params": "all"},
                    "grand_last_layer": {"method": "grand", "epoch": 1, "params": "last_layer"},
                    "grand_lora": {"method": "grand", "epoch": 1, "params": "lora"},
                    "loss": {"method": "loss", "epoch": 2}},
        "selection": {"fractions": [0.5], "policies": {
            "random": {"policy": "random"}, "el2n_top": {"policy": "top", "score": "el2n"},
            "grand_lora_top": {"policy": "top", "score": "grand_lora"}}},
        "training": {"model": {**model, "lora": None}, "seeds": [0], "budget": {"unit": "steps", "value": 12},
                     "batch_size": 16, "lr": 0.003},
    }


def test_jsonl_text_runs_the_whole_chain(tmp_path, bert):
    from datasel.cli import main

    src = corpus()
    src.write_ndjson(tmp_path / "topics.jsonl")
    cfg = _config({"source": "files", "path": "topics.jsonl", "text_column": "sentence", "label_column": "topic"},
                  str(bert))
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    res = tmp_path / "results"
    meta = json.loads((res / "examples" / "meta.json").read_text())
    assert meta["kind"] == "text" and meta["num_classes"] == 3
    n_train = meta["sizes"]["train"]
    for method in ("el2n", "grand", "grand_last_layer", "grand_lora", "loss"):
        s = pl.read_parquet(res / "scores" / f"{method}.parquet")
        assert s.height == n_train and s.get_column("score").is_finite().all(), method
        assert s.get_column("score").std() > 0, method  # a constant score would mean the model ignored the text
    # LoRA checkpoints hold adapters and the head only, not the frozen backbone
    ckpt = __import__("torch").load(res / "proxy" / "seed0" / "epoch1.pt", weights_only=False)
    assert ckpt["partial"] and all("lora_" in k or "classifier" in k for k in ckpt["state_dict"])
    # GraNd over all parameters of a LoRA proxy is over its trainable ones: adapters + head ≥ adapters alone
    all_p = pl.read_parquet(res / "scores" / "grand.parquet").sort("example_id").get_column("score")
    lora = pl.read_parquet(res / "scores" / "grand_lora.parquet").sort("example_id").get_column("score")
    assert (all_p >= lora - 1e-9).all() and (all_p > lora).any()
    summary = pl.read_csv(res / "report" / "summary.csv")
    assert {"random_keep50", "el2n_top_keep50", "grand_lora_top_keep50", "full_keep100"} <= set(
        summary.get_column("selection"))
    out = tmp_path / "subset"
    assert main(["export", "el2n_top_keep50", "--format", "jsonl", "--out", str(out), "--results", str(res)]) in (0, None)
    exported = pl.concat([pl.read_ndjson(f) for f in sorted(out.glob("*.jsonl"))])
    assert exported.height == round(n_train * 0.5)
    text_col = "sentence" if "sentence" in exported.columns else "text"
    assert set(exported.get_column(text_col)) <= set(src.get_column("sentence"))


def test_save_to_disk_text_trains_and_scores(tmp_path, bert):
    datasets = pytest.importorskip("datasets")
    src = corpus(30)
    datasets.Dataset.from_dict(src.to_dict(as_series=False)).save_to_disk(str(tmp_path / "topics_ds"))
    cfg = _config({"source": "hf", "path": "topics_ds", "text_column": "sentence", "label_column": "topic"},
                  str(bert))
    cfg["proxy"]["seeds"] = 1
    cfg["scoring"] = {k: cfg["scoring"][k] for k in ("el2n", "grand_last_layer")}
    cfg["selection"]["policies"] = {"el2n_top": {"policy": "top", "score": "el2n"}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    metrics = pl.read_parquet(tmp_path / "results" / "metrics" / "train" / "el2n_top_keep50" / "seed0.parquet")
    acc = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy")).get_column("value")
    assert acc.len() == 1 and 0.0 <= acc[0] <= 1.0


def test_text_run_is_deterministic(tmp_path, bert):
    """Same config and seed: the same EL2N scores bit for bit (CPU), through the task seam in-process."""
    from datasel.data.prepare import build_examples
    from datasel.runtime import seed_everything
    from datasel.scoring.el2n import el2n
    from datasel.tasks import make_task
    from datasel.training.classify import train_classifier

    corpus(20).write_ndjson(tmp_path / "t.jsonl")
    df, meta = build_examples({"source": "files", "path": str(tmp_path / "t.jsonl"), "text_column": "sentence",
                               "label_column": "topic"})
    cfg = {"name": "hf_classifier", "path": str(bert), "max_length": 12, "lora": {"r": 2, "alpha": 4}}
    runs = []
    for _ in range(2):
        task = make_task(df, meta, cfg)
        seed_everything(5)
        model = task.build_model()
        tr = task.split("train")
        train_classifier(model, tr.inputs, tr.labels, {"batch_size": 8, "budget": {"unit": "steps", "value": 6}},
                         seed=5)
        runs.append(el2n(model, tr.inputs, tr.labels))
    assert runs[0].equal(runs[1])


def test_missing_model_folder_is_refused(tmp_path, tiny_text_meta=None):
    from datasel.models import build_model

    with pytest.raises(ConfigError) as err:
        build_model({"name": "hf_classifier", "path": str(tmp_path / "nope")}, {"kind": "text", "num_classes": 2},
                    where="proxy.model")
    assert err.value.field == "proxy.model.path" and "does not exist" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        build_model({"name": "hf_classifier", "path": str(tmp_path / "empty")}, {"kind": "text", "num_classes": 2})
    assert "config.json" in str(err.value)


def test_missing_tokenizer_is_refused(tmp_path, bert):
    import shutil

    from datasel.tasks import make_task

    model_only = tmp_path / "model_only"
    model_only.mkdir()
    for f in bert.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, model_only / f.name)
    df = pl.DataFrame({"example_id": ["a", "b"], "split": ["train"] * 2, "label": [0, 1], "text": ["x y", "z"]})
    with pytest.raises(ConfigError) as err:
        make_task(df, {"kind": "text", "num_classes": 2}, {"name": "hf_classifier", "path": str(model_only)},
                  where="training.model")
    assert err.value.field == "training.model.path" and "tokenizer" in str(err.value)
    assert str(model_only) in str(err.value)
