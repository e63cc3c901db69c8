"""The instruction-data chain (LESS for a causal LM): data handling, the whole chain on a tiny GPT-2, bad input.

The chain test calls the rule steps in one process (each Snakemake job would pay seconds of torch/transformers
imports); the dry run checks that rules/instruct.smk wires the same steps together.
"""

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
from conftest import ROOT, snakemake, snakemake_cmd
from lm_models import save_tiny_llama

from datasel.config import check_config, load_config
from datasel.errors import ConfigError, DataError
from datasel.instruct import families, steps
from datasel.instruct.data import prepare_examples, render
from datasel.instruct.model import build_tiny_model, check_model_folder, load_lm
from datasel.tasks.causal_lm import IGNORE, completion_loss, encode

os.environ.setdefault("DATASEL_PROGRESS", "0")

TINY_CFG: dict[str, Any] = {
    "stages": ["instruct"],
    "instruct": {
        "device": "cpu",
        "data": {"pool": "data/pool.jsonl", "target": "data/target.jsonl", "test": "data/test.jsonl",
                 "max_length": 40,
                 "generate": {"per_family": 12, "target": 8, "test": 6, "target_family": "arith", "seed": 0,
                              "families": ["arith", "docname", "reverse", "sort", "module"]}},
        "model": {"tiny": {"vocab_size": 300, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}},
        "warmup": {"fraction": 0.3, "epochs": 2, "batch_size": 8, "lr": 0.01},
        "features": {"dim": 64, "shards": 2, "chunk_size": 8},
        "selection": {"fraction": 0.25},
        "finetune": {"seeds": [0], "epochs": 1, "batch_size": 8},
        "eval": {"max_new_tokens": 3},
    },
}


# the data keys with their schema defaults (instruct.schema.yaml)
DATA_KEYS: dict[str, Any] = {"format": "auto", "prompt_column": "prompt", "completion_column": "completion",
                             "messages_column": "messages", "conversations_column": "conversations",
                             "task_column": "task", "ignore_columns": []}


def _config(tmp: Path, **instruct: Any) -> dict[str, Any]:
    """TINY_CFG's instruct section, keys of ``instruct`` replacing its own, checked and filled by the schema."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump({**TINY_CFG, "instruct": {**TINY_CFG["instruct"], **instruct}}))
    cfg = check_config(load_config([tmp / "config.yaml"]), ROOT / "workflow" / "schemas")["instruct"]
    cfg["data"] = {**cfg["data"], **{r: str(tmp / cfg["data"][r]) for r in ("pool", "target", "test")}}
    return cfg


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"What is {a} + {b}?\nAnswer: {a + b}" for a in range(10) for b in range(5)]
    return build_tiny_model(texts, tmp_path_factory.mktemp("lm") / "model",
                            {"vocab_size": 300, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "seed": 0})


def _select_chain(tmp: Path, warmup_seed: int = 0, model_dir: Path | None = None, **instruct: Any) -> dict[str, Any]:
    """The chain up to the selections, in ``tmp``: data, base model (the tiny GPT-2 built from the pool, or the
    model in ``model_dir``), examples, warm-up, features, LESS scores, and the four selections (less_top and random
    25%, the full pool, the target rows)."""
    cfg = _config(tmp, **instruct)
    cfg["warmup"]["seed"] = warmup_seed
    r = tmp / "results/instruct"
    data = {k: cfg["data"][k] for k in ("pool", "target", "test")}
    steps.generate_data(cfg["data"]["generate"], **data)
    model = model_dir or r / "base_model"
    if model_dir is None:
        steps.build_model(cfg, str(model))
    common = (cfg, str(model))
    ex = r / "examples.parquet"
    steps.prepare(*common, examples=str(ex), truncation=str(r / "truncation.json"))
    ckpts = [r / f"warmup/epoch{e}.pt" for e in (1, 2)]
    steps.warmup(*common, examples=str(ex), sample=str(r / "warmup/sample.parquet"),
                 checkpoints=[str(c) for c in ckpts])
    indexes = []
    for e, ck in zip((1, 2), ckpts):
        for split in ("train", "val"):
            shards = [r / f"features/epoch{e}-{split}/shard_{i}" for i in range(2)]
            for i, out in enumerate(shards):
                steps.features_shard(*common, examples=str(ex), checkpoint=str(ck), out=str(out), split=split,
                                     shard=i)
            index = r / f"features/epoch{e}-{split}/index.json"
            steps.features_gather([str(s) for s in shards], str(index), epoch=e, split=split)
            indexes.append(str(index))
    scores = r / "scores/less.parquet"
    steps.score(cfg["score"], examples=str(ex), features=indexes, out=str(scores))
    sels = {}
    for name, fraction in (("less_top", 0.25), ("random", 0.25), ("full", 1.0), ("target", 0.0)):
        entry = cfg["selection"]["policies"].get(name, {"policy": "target"})  # the target rows alone
        out = r / f"selections/{name}_keep{round(fraction * 100)}.parquet"
        steps.select(str(ex), str(scores) if entry.get("score") else None, out=str(out), name=name, policy=entry,
                     fraction=fraction, seed=0)
        sels[out.stem] = out
    return {"cfg": cfg, "r": r, "data": data, "common": common, "examples": ex, "checkpoints": ckpts,
            "features": indexes, "scores": scores, "selections": sels}


def test_whole_chain_on_a_tiny_model(tmp_path: Path) -> None:
    chain = _select_chain(tmp_path)
    r, data, common, ex, sels = chain["r"], chain["data"], chain["common"], chain["examples"], chain["selections"]
    table = pl.read_parquet(ex)
    assert set(table.get_column("split")) == {"train", "val", "test"}
    assert set(table.filter(pl.col("split") == "val").get_column("task")) == {"arith"}
    saved = torch.load(chain["checkpoints"][1], weights_only=False)
    assert saved["optimizer"]["state"] and saved["lr"] > 0 and all("lora_" in k for k in saved["adapter"])
    for index in chain["features"]:
        split = Path(index).parent.name.split("-")[1]
        meta = json.loads((Path(index).parent / "shard_0" / "meta.json").read_text())
        assert meta["precondition"] == ("adam" if split == "train" else "none")  # LESS: pool only
    sc = pl.read_parquet(chain["scores"])
    assert sc.height == table.filter(pl.col("split") == "train").height and sc.get_column("score").is_finite().all()
    for name, path in sels.items():
        steps.finetune(*common, examples=str(ex), selection=str(path), out=str(r / f"metrics/{name}.parquet"),
                       name=name)
    md, csv = r / "report/summary.md", r / "report/summary.csv"
    steps.report(str(ex), str(r / "truncation.json"), selections=[str(p) for p in sels.values()],
                 metrics=[str(r / f"metrics/{n}.parquet") for n in sels], md=str(md), csv=str(csv))
    summary = pl.read_csv(csv)
    by = {row["selection"]: row for row in summary.iter_rows(named=True)}
    assert by["full_keep100"]["target_share"] == pytest.approx(by["full_keep100"]["base_rate"])
    assert by["target_keep0"]["kept"] == 8 and by["target_keep0"]["target_share"] == 1.0
    # the target set is all arithmetic: LESS's top quarter holds more of it than the pool does
    assert by["less_top_keep25"]["target_share"] > by["less_top_keep25"]["base_rate"]
    assert np.isfinite(summary.get_column("loss_mean").to_numpy()).all()
    assert "share from target task" in md.read_text() and "Target task(s): arith" in md.read_text()
    # export: the user's own rows and columns, nothing datasel added, through the export writer (marker and all)
    out = r / "export" / "less_top_keep25"
    steps.export(str(ex), out=str(out), selection="less_top_keep25", fmt="jsonl")
    back = pl.read_ndjson(out / "less_top_keep25.jsonl")
    assert back.columns == ["prompt", "completion", "task"] and (out / ".datasel-export.json").is_file()
    kept = pl.read_parquet(sels["less_top_keep25"]).filter(pl.col("selected")).height
    assert back.height == kept
    pool = pl.read_ndjson(data["pool"])
    assert back.join(pool, on=["prompt", "completion", "task"], how="semi").height == back.height


@pytest.mark.parametrize("model", ["tiny_gpt2", "llama"])
def test_the_chain_selects_the_same_rows_again_from_scratch(tmp_path: Path, model: str) -> None:
    """Same config and seeds in a fresh folder: the same LESS scores and the same selected ids, bit for bit. On the
    chain test's tiny GPT-2, and on a llama folder set up as config/experiments/instruct.yaml sets up SmolLM2 (LoRA
    on the architecture's default q_proj/v_proj, factored projection)."""
    kw: dict[str, Any] = {}
    if model == "llama":
        llama = save_tiny_llama(tmp_path / "llama")
        kw = {"model": {"path": str(llama), "lora": {"r": 4, "alpha": 8}}, "model_dir": llama,
              "features": {"dim": 64, "projection": "factored", "shards": 2, "chunk_size": 8}}
    first, again = _select_chain(tmp_path / "a", **kw), _select_chain(tmp_path / "b", **kw)
    scores = pl.read_parquet(first["scores"])
    assert scores.get_column("score").n_unique() > 1
    assert scores.equals(pl.read_parquet(again["scores"]))
    for name, path in first["selections"].items():
        assert pl.read_parquet(path).equals(pl.read_parquet(again["selections"][name])), name
    kept = pl.read_parquet(first["selections"]["less_top_keep25"]).filter(pl.col("selected"))
    assert 0 < kept.height < scores.height
    # the warm-up seed reaches the scores (LoRA init and batch order): the comparison above is not vacuous
    other = _select_chain(tmp_path / "c", warmup_seed=1, **kw)
    assert not scores.equals(pl.read_parquet(other["scores"]))


def test_workflow_wires_the_chain(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CFG))
    proc = snakemake(tmp_path, "-n")
    text = proc.stdout + proc.stderr
    for rule in ("instruct_generate", "instruct_model", "instruct_prepare", "instruct_warmup",
                 "instruct_features_shard", "instruct_features_gather", "instruct_score", "instruct_select",
                 "instruct_finetune", "instruct_report", "instruct_export"):
        assert rule in text, rule


def test_generate_never_replaces_the_users_own_data_files(tmp_path: Path) -> None:
    # a user's run folder from the instruct template: their pool and target in place, `generate` left in, the
    # test file not yet there; Snakemake would rerun the generate rule and replace all three files
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CFG))
    (tmp_path / "data").mkdir()
    mine = {"pool": '{"prompt": "What is 1 + 1?", "completion": "2"}\n',
            "target": '{"prompt": "What is 2 + 2?", "completion": "4"}\n'}
    for role, text in mine.items():
        (tmp_path / "data" / f"{role}.jsonl").write_text(text)
    proc = subprocess.run(snakemake_cmd(tmp_path, "-n", cores="1"), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DATASEL_PROGRESS": "0"})
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "instruct.data.generate" in text and "data/pool.jsonl" in text and "remove instruct.data.generate" in text
    assert "rule instruct_generate" not in text  # refused before any job is planned
    for role, text in mine.items():
        assert (tmp_path / "data" / f"{role}.jsonl").read_text() == text
    # files the generator wrote itself are its own: regenerating them (a missing one, --forceall) is allowed
    paths = {r: tmp_path / "gen" / f"{r}.jsonl" for r in ("pool", "target", "test")}
    families.write(TINY_CFG["instruct"]["data"]["generate"], paths)
    families.check_replaceable(paths)
    paths["pool"].write_text(paths["pool"].read_text() + '{"prompt": "mine", "completion": "too"}\n')
    with pytest.raises(ConfigError, match="was not written by instruct.data.generate"):
        families.check_replaceable(paths)  # an edited pool is the user's now


def test_a_missing_local_model_is_one_config_error(tmp_path: Path) -> None:
    """A model path that does not exist is refused when the Snakefile is read, naming instruct.model.path, the path
    and the fix, not by Snakemake as a missing input file of the first rule that reads the model."""
    cfg = copy.deepcopy(TINY_CFG)
    missing = tmp_path / "models" / "my-causal-lm"
    cfg["instruct"]["model"] = {"path": str(missing), "lora": cfg["instruct"]["model"]["lora"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and out.count("config field 'instruct.model.path'") == 1, out[-3000:]
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
    assert str(path) in msg and "field 'instruct.data.completion_column'" in msg
    assert "needs column(s) ['completion']" in msg
    assert "fix" in msg
    with pytest.raises(DataError) as exc:  # detected: no format fits, each format's columns listed
        prepare_examples({**cfg, "format": "auto"}, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    msg = str(exc.value)
    assert "no instruction format fits the columns (prompt, answer)" in msg and "instruct.data.format" in msg
    assert "instruction, input, output" in msg


def test_every_completion_truncated_away_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "pool.jsonl"
    pl.DataFrame({"prompt": ["a long prompt of many words " * 3] * 2, "completion": ["x", "y"]}).write_ndjson(path)
    cfg = {"pool": str(path), "target": str(path), "test": str(path), **DATA_KEYS, "max_length": 5}
    with pytest.raises(DataError) as exc:
        prepare_examples(cfg, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    msg = str(exc.value)
    assert "every completion was truncated away" in msg and "instruct.data.max_length" in msg
    assert str(path) in msg and "raise instruct.data.max_length" in msg


def test_model_folder_without_tokenizer_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError) as exc:
        check_model_folder(bare, "instruct.model.path")
    msg = str(exc.value)
    assert "no tokenizer" in msg and str(bare) in msg and "instruct.model.path" in msg
    assert "tokenizer.save_pretrained" in msg


def test_missing_lora_target_module_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_lm(tiny_model, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]}, torch.device("cpu"))
    msg = str(exc.value)
    assert "['q_proj'] do not exist" in msg and "instruct.model.lora.target_modules" in msg
    assert str(tiny_model) in msg and "c_attn" in msg  # the fix lists modules that do exist


def test_pool_and_target_features_share_one_fitted_basis(tmp_path: Path) -> None:
    """factor_basis pca in the LESS chain: every shard of the pool and of the target set uses the basis fitted on
    pool rows spread over the pool, so their features are comparable (the store compares projection digests)."""
    cfg = _config(tmp_path)
    cfg["features"] = {**cfg["features"], "projection": "factored", "factor_basis": "pca", "factor_fit_rows": 16}
    r = tmp_path / "results/instruct"
    steps.generate_data(cfg["data"]["generate"], **{k: cfg["data"][k] for k in ("pool", "target", "test")})
    common = (cfg, str(r / "base_model"))
    steps.build_model(cfg, str(r / "base_model"))
    ex = r / "examples.parquet"
    steps.prepare(*common, examples=str(ex), truncation=str(r / "truncation.json"))
    steps.warmup(*common, examples=str(ex), sample=str(r / "warmup/sample.parquet"),
                 checkpoints=[str(r / "warmup/epoch1.pt"), str(r / "warmup/epoch2.pt")])
    metas = []
    for split in ("train", "val"):
        for i in range(2):
            out = r / f"features/epoch1-{split}/shard_{i}"
            steps.features_shard(*common, examples=str(ex), checkpoint=str(r / "warmup/epoch1.pt"), out=str(out),
                                 split=split, shard=i)
            metas.append(json.loads((out / "meta.json").read_text()))
    assert {m["projection"] for m in metas} == {"factored"} and {m["projector"] for m in metas} == {"pca"}
    assert len({m["projection_sha"] for m in metas}) == 1
