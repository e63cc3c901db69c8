"""Instruction data for a causal LM (LESS): data handling, the selection chain on a tiny GPT-2 and a tiny llama, bad
input. The chain runs its rule steps in one process (tests/lm_chain.py); the dry run checks that the Snakefile wires
the same steps together."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from conftest import snakemake, snakemake_cmd
from lm_chain import CONFIG, run_chain
from lm_models import save_tiny_llama

from datasel.errors import ConfigError, DataError
from datasel.export import export_selection
from datasel.instruct import families
from datasel.instruct.data import prepare_examples, render
from datasel.instruct.model import build_tiny_model, check_model_folder, load_lm
from datasel.tasks.causal_lm import IGNORE, completion_loss, encode

os.environ.setdefault("DATASEL_PROGRESS", "0")

# the data keys with their schema defaults (data.instruct in config.schema.yaml)
DATA_KEYS: dict[str, Any] = {"format": "auto", "prompt_column": "prompt", "completion_column": "completion",
                             "messages_column": "messages", "conversations_column": "conversations",
                             "task_column": "task", "ignore_columns": []}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"What is {a} + {b}?\nAnswer: {a + b}" for a in range(10) for b in range(5)]
    return build_tiny_model(texts, tmp_path_factory.mktemp("lm") / "model",
                            {"vocab_size": 300, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "seed": 0})


def test_whole_chain_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chain = run_chain(tmp_path)
    table = pl.read_parquet(chain["examples"])
    meta = json.loads(chain["meta"].read_text())
    assert meta["kind"] == "causal_lm" and set(table.get_column("split")) == {"train", "val", "test"}
    assert set(table.filter(pl.col("split") == "val").get_column("task")) == {"arith"}
    saved = torch.load(chain["checkpoints"][1], weights_only=False)
    assert saved["optimizer"]["state"] and saved["lr"] > 0 and all("lora_" in k for k in saved["adapter"])
    warm = pl.read_parquet("results/proxy/seed0/sample.parquet")
    assert warm.height == round(0.3 * table.filter(pl.col("split") == "train").height)
    for index in chain["features"]:
        split = Path(index).parent.name.split("-")[-1]
        shard = json.loads((Path(index).parent / "shard_0" / "meta.json").read_text())
        assert shard["precondition"] == ("adam" if split == "train" else "none")  # LESS: pool only
        assert shard["lr"] == pytest.approx(torch.load(f"results/proxy/seed0/epoch{shard['checkpoint'][-1]}.pt",
                                                        weights_only=False)["lr"])
    sc = pl.read_parquet(chain["scores"])
    assert sc.height == table.filter(pl.col("split") == "train").height and sc.get_column("score").is_finite().all()
    summary = pl.read_csv(chain["report"] / "summary.csv")
    by = {row["selection"]: row for row in summary.iter_rows(named=True)}
    assert set(by) == {"less_top_keep25", "random_keep25", "target_keep0", "full_keep100"}
    assert by["full_keep100"]["target_share"] == pytest.approx(by["full_keep100"]["base_rate"])
    assert by["target_keep0"]["target_share"] == 1.0
    # the target set is all arithmetic: LESS's top quarter holds more of it than the pool does
    assert by["less_top_keep25"]["target_share"] > by["less_top_keep25"]["base_rate"]
    assert np.isfinite(summary.get_column("accuracy_mean").to_numpy()).all()
    md = (chain["report"] / "summary.md").read_text()
    assert md.startswith("# Selection summary: test exact match of the fine-tuned model")
    assert "Target task(s): arith" in md and "`target_keep0`" in md
    metrics = pl.concat([pl.read_parquet(p) for p in chain["metrics"]])
    assert set(metrics.filter(pl.col("metric") == "accuracy").get_column("split")) == {"val", "test"}
    assert metrics.filter(pl.col("metric") == "accuracy").get_column("value").is_between(0, 1).all()
    # the target-alone baseline trains on the target rows and is never the one chosen on them
    assert not summary.filter(pl.col("selection") == "target_keep0").get_column("chosen_on_validation").any()
    # export: the user's own rows and columns, nothing datasel added, through the export writer (marker and all)
    out = export_selection(Path("results"), "less_top_keep25", "jsonl", tmp_path / "export")
    back = pl.read_ndjson(out / "less_top_keep25.jsonl")
    assert back.columns == ["prompt", "completion", "task"] and (out / ".datasel-export.json").is_file()
    kept = pl.read_parquet(chain["selections"]["less_top_keep25"]).filter(pl.col("selected")).height
    assert back.height == kept
    pool = pl.read_ndjson("data/pool.jsonl")
    assert back.join(pool, on=["prompt", "completion", "task"], how="semi").height == back.height
    with pytest.raises(DataError, match="trains on the target rows"):
        export_selection(Path("results"), "target_keep0", "jsonl", tmp_path / "export-target")


@pytest.mark.parametrize("model", ["tiny_gpt2", "llama"])
def test_the_chain_selects_the_same_rows_again_from_scratch(tmp_path: Path, model: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Same config and seeds in a fresh folder: the same LESS scores and the same selected ids, bit for bit. On the
    chain test's tiny GPT-2, and on a llama folder set up as config/experiments/instruct.yaml sets up SmolLM2 (LoRA
    on the architecture's default q_proj/v_proj, factored projection)."""
    cfg = copy.deepcopy(CONFIG)
    lm = None
    if model == "llama":
        lm = save_tiny_llama(tmp_path / "llama")
        for section in ("proxy", "training"):
            cfg[section]["model"] = {"name": "causal_lm", "path": str(lm), "lora": {"r": 4, "alpha": 8}}
        cfg["features"]["sets"]["less"]["projection"] = "factored"
    runs = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        if name == "c":  # another warm-up (its learning rate): the comparison below is not vacuous
            cfg["proxy"]["lr"] = 0.02
        runs[name] = run_chain(tmp_path / name, cfg, train_too=False, lm=lm)
    first, again = runs["a"], runs["b"]
    scores = pl.read_parquet(tmp_path / "a" / first["scores"])
    assert scores.get_column("score").n_unique() > 1
    assert scores.equals(pl.read_parquet(tmp_path / "b" / again["scores"]))
    for name, path in first["selections"].items():
        assert pl.read_parquet(tmp_path / "a" / path).equals(pl.read_parquet(tmp_path / "b" / path)), name
    kept = pl.read_parquet(tmp_path / "a" / first["selections"]["less_top_keep25"]).filter(pl.col("selected"))
    assert 0 < kept.height < scores.height
    assert not scores.equals(pl.read_parquet(tmp_path / "c" / runs["c"]["scores"]))


def _write(tmp: Path, cfg: dict[str, Any]) -> None:
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_workflow_wires_the_chain(tmp_path: Path) -> None:
    _write(tmp_path, CONFIG)
    proc = snakemake(tmp_path, "-n")
    text = proc.stdout + proc.stderr
    for rule in ("generate_instructions", "tiny_lm", "prepare", "proxy", "features_shard", "features_gather",
                 "score", "select", "train", "report"):
        assert f"rule {rule}:" in text, rule
    assert "results/selections/target_keep0.parquet" in text and "results/proxy/seed0/sample.parquet" in text


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"training": {**CONFIG["training"], "curve_points": 5}}, "training.curve_points", "no training curve"),
    ({"scoring": {"el2n": {"method": "el2n", "epoch": 1}}}, "scoring.el2n.method", "scores class predictions"),
    ({"training": {**CONFIG["training"], "model": {"name": "mlp"}}}, "training.model.name", "trains a causal LM"),
])
def test_settings_that_do_not_fit_instruction_data_are_refused(tmp_path: Path, change: dict, field: str,
                                                               words: str) -> None:
    _write(tmp_path, {**CONFIG, **change})
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"field '{field}'" in out and words in out, out[-2000:]
    assert "config.yaml" in out and "Traceback" not in out


def test_target_policy_is_refused_on_classification_data(tmp_path: Path) -> None:
    from conftest import write_config

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/config.yaml").read_text())
    cfg["selection"]["policies"]["target"] = {"policy": "target"}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "selection.policies.target.policy" in out and "instruction data" in out


def test_generate_never_replaces_the_users_own_data_files(tmp_path: Path) -> None:
    # a user's run folder from the instruct template: their pool and target in place, `generate` left in, the
    # test file not yet there; Snakemake would rerun the generate rule and replace all three files
    _write(tmp_path, CONFIG)
    (tmp_path / "data").mkdir()
    mine = {"pool": '{"prompt": "What is 1 + 1?", "completion": "2"}\n',
            "target": '{"prompt": "What is 2 + 2?", "completion": "4"}\n'}
    for role, text in mine.items():
        (tmp_path / "data" / f"{role}.jsonl").write_text(text)
    proc = subprocess.run(snakemake_cmd(tmp_path, "-n", cores="1"), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DATASEL_PROGRESS": "0"})
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "data.instruct.generate" in text and "data/pool.jsonl" in text and "remove data.instruct.generate" in text
    assert "rule generate_instructions" not in text  # refused before any job is planned
    for role, text in mine.items():
        assert (tmp_path / "data" / f"{role}.jsonl").read_text() == text
    # files the generator wrote itself are its own: regenerating them (a missing one, --forceall) is allowed
    paths = {r: tmp_path / "gen" / f"{r}.jsonl" for r in ("pool", "target", "test")}
    families.write(CONFIG["data"]["instruct"]["generate"], paths)
    families.check_replaceable(paths)
    paths["pool"].write_text(paths["pool"].read_text() + '{"prompt": "mine", "completion": "too"}\n')
    with pytest.raises(ConfigError, match="was not written by data.instruct.generate"):
        families.check_replaceable(paths)  # an edited pool is the user's now


def test_a_missing_local_model_is_one_config_error(tmp_path: Path) -> None:
    """A model path that does not exist is refused when the Snakefile is read, naming the model's field, the path
    and the fix, not by Snakemake as a missing input file of the first rule that reads the model."""
    cfg = copy.deepcopy(CONFIG)
    missing = tmp_path / "models" / "my-causal-lm"
    for section in ("proxy", "training"):
        cfg[section]["model"] = {"name": "causal_lm", "path": str(missing), "lora": {"r": 4, "alpha": 8}}
    _write(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and out.count("config field 'training.model.path'") == 1, out[-3000:]
    assert f"model folder '{missing}' does not exist" in out and "fix: point it at a folder" in out
    assert "MissingInput" not in out and "Missing input files" not in out


def _pc(prompts: list[str], completions: list[str], eos: str) -> tuple[list[list[str]], list[list[bool]]]:
    """prompt/completion rows as encode's parts: the prompt untrained, the completion and end token trained."""
    return [[p, c + eos] for p, c in zip(prompts, completions)], [[False, True]] * len(prompts)


def test_encode_puts_the_loss_on_completion_tokens_only(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = ["What is 1 + 2?\nAnswer: ", "What is 3 + 4?\nAnswer: "]
    enc, rep, _, _ = encode(tok, *_pc(prompts, ["3", "7"], tok.eos_token), 64)
    for r in range(2):
        n_prompt = len(tok(prompts[r], add_special_tokens=False)["input_ids"])
        lab = enc.labels[r]
        assert (lab[:n_prompt] == IGNORE).all()
        comp = lab[lab != IGNORE].tolist()
        assert comp[-1] == tok.eos_token_id and tok.decode(comp[:-1]) == ["3", "7"][r]
    assert rep["truncated"] == 0
    enc, rep, _, full = encode(tok, *_pc(["What is 1 + 2?\nAnswer: "], ["3 and a long tail of words"], tok.eos_token),
                               12)
    assert rep["truncated"] == 1 and enc.input_ids.shape[1] == 12 and full[0] > (enc.labels != IGNORE).sum()
    enc, rep, dropped, _ = encode(tok, *_pc(["What is 1 + 2?\nAnswer: ", "Hi "], ["3", "there"], tok.eos_token), 4)
    assert dropped == [0] and rep["completion_removed"] == 1  # its prompt alone fills max_length


def test_per_example_loss_does_not_depend_on_the_batch(tiny_model: Path) -> None:
    torch.manual_seed(0)
    pol = load_lm(tiny_model, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["c_attn"]}, torch.device("cpu"))
    prompts = ["What is 1 + 2?\nAnswer: ", "What is 13 + 4?\nAnswer: reply "]
    enc, _, _, _ = encode(pol.tok, *_pc(prompts, ["3", "17"], pol.tok.eos_token), 64)
    with torch.no_grad():
        both = completion_loss(pol.module(**enc.inputs()), enc.labels)
        alone = [completion_loss(pol.module(**{k: v[i:i + 1] for k, v in enc.inputs().items()}), enc.labels[i:i + 1])
                 for i in range(2)]
    assert both.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, rel=1e-5)


def test_chat_messages_are_rendered(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    df = pl.DataFrame({"messages": [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}]]})
    fmt, (row,) = render(df, DATA_KEYS, tok, "f")
    assert fmt == "messages" and row.parts == ("user: Hi?\nassistant: ", "Hello" + tok.eos_token)
    assert row.trained == (False, True) and (row.prompt, row.completion) == ("user: Hi?\nassistant: ", "Hello")
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    _, (row,) = render(df, DATA_KEYS, tok, "f")
    assert row.parts == ("<user>Hi?<assistant>", "Hello") and row.prompt == "<user>Hi?<assistant>"


# ---------------------------------------------------------------------------------------------------- bad input


def test_no_completion_column_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "pool.jsonl"
    pl.DataFrame({"prompt": ["a"], "answer": ["b"]}).write_ndjson(path)
    cfg = {"pool": str(path), "target": str(path), "test": str(path), **DATA_KEYS, "format": "prompt_completion",
           "max_length": 32}
    with pytest.raises(DataError) as exc:
        prepare_examples(cfg, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    msg = str(exc.value)
    assert str(path) in msg and "field 'data.instruct.completion_column'" in msg
    assert "needs column(s) ['completion']" in msg
    assert "fix" in msg
    with pytest.raises(DataError) as exc:  # detected: no format fits, each format's columns listed
        prepare_examples({**cfg, "format": "auto"}, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    msg = str(exc.value)
    assert "no instruction format fits the columns (prompt, answer)" in msg and "data.instruct.format" in msg
    assert "instruction, input, output" in msg


def test_every_completion_truncated_away_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "pool.jsonl"
    pl.DataFrame({"prompt": ["a long prompt of many words " * 3] * 2, "completion": ["x", "y"]}).write_ndjson(path)
    cfg = {"pool": str(path), "target": str(path), "test": str(path), **DATA_KEYS, "max_length": 5}
    with pytest.raises(DataError) as exc:
        prepare_examples(cfg, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    msg = str(exc.value)
    assert "every completion was truncated away" in msg and "data.instruct.max_length" in msg
    assert str(path) in msg and "raise data.instruct.max_length" in msg


def test_model_folder_without_tokenizer_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError) as exc:
        check_model_folder(bare, "training.model.path")
    msg = str(exc.value)
    assert "no tokenizer" in msg and str(bare) in msg and "training.model.path" in msg
    assert "tokenizer.save_pretrained" in msg


def test_missing_lora_target_module_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_lm(tiny_model, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]}, torch.device("cpu"))
    msg = str(exc.value)
    assert "['q_proj'] do not exist" in msg and "training.model.lora.target_modules" in msg
    assert str(tiny_model) in msg and "c_attn" in msg  # the fix lists modules that do exist


def test_pool_and_target_features_share_one_fitted_basis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """factor_basis pca in the LESS chain: every shard of the pool and of the target set uses the basis fitted on
    pool rows spread over the pool, so their features are comparable (the store compares projection digests)."""
    cfg = copy.deepcopy(CONFIG)
    cfg["features"]["sets"]["less"] |= {"projection": "factored", "factor_basis": "pca", "factor_fit_rows": 16}
    cfg["proxy"]["checkpoints"] = [1]
    monkeypatch.chdir(tmp_path)
    chain = run_chain(tmp_path, cfg, train_too=False)
    metas = [json.loads(p.read_text()) for idx in chain["features"] for p in Path(idx).parent.glob("shard_*/meta.json")]
    assert len(metas) == 4
    assert {m["projection"] for m in metas} == {"factored"} and {m["projector"] for m in metas} == {"pca"}
    assert len({m["projection_sha"] for m in metas}) == 1
