"""The causal-LM task kind: its batches (loss on completion tokens only), its one per-example loss against a
hand-built reference, the instruction fine-tune, the CurES warm start, GRPO's policy and DGA's LM all computing
through that one function, and the fine-tune's adapters the same bytes for the same seed."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import AnyJob, recording, script_step
from lm_models import CHAT_TEMPLATE, save_tiny_gpt2, save_tiny_llama

from datasel.errors import ConfigError, DataError
from datasel.features.layer_grads import is_per_example_mean
from datasel.instruct.model import adapter_state, load_lm
from datasel.rl.grpo import GRPOBatch, GRPOTrainer
from datasel.rl.policy import CharPolicy
from datasel.rl.tokenizer import CharTokenizer
from datasel.rl.warmstart import warm_start
from datasel.tasks import causal_lm, make_task
from datasel.tasks.causal_lm import IGNORE, CausalLMTask, completion_loss, example_nll, token_logprobs
from datasel.training.lm import train_lora

os.environ.setdefault("DATASEL_PROGRESS", "0")

LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": None}
PAIRS = pl.DataFrame({"example_id": [f"e{i}" for i in range(6)], "split": ["train"] * 4 + ["test"] * 2,
                      "prompt": ["What is 2 + 3?", "Name a colour.", "Capital of France?", "Add 1 and 1",
                                 "What is 4 + 4?", "Name a fruit."],
                      "completion": ["5", "Blue.", "Paris.", "2", "8", "Apple."]})


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm-task")
    return {"llama": save_tiny_llama(root / "llama"), "gpt2": save_tiny_gpt2(root / "gpt2")}


def reference_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, by loops: the mean over trained positions t of −log softmax(logits[t−1])[labels[t]]."""
    out = []
    for b in range(logits.shape[0]):
        terms = [-math.log(math.exp(float(logits[b, t - 1, labels[b, t]]))
                           / sum(math.exp(float(v)) for v in logits[b, t - 1]))
                 for t in range(1, logits.shape[1]) if int(labels[b, t]) != IGNORE]
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return torch.tensor(out)


def test_per_example_loss_equals_a_hand_built_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, :3] = IGNORE  # a prompt of three tokens
    labels[1, :5] = IGNORE
    labels[1, 6] = IGNORE  # padding after the reply
    labels[2, :] = IGNORE  # a row left with no trained token: loss 0, no NaN
    want = reference_nll(logits, labels)
    assert torch.allclose(example_nll(logits, labels), want, atol=1e-5)
    assert float(completion_loss(logits, labels)) == pytest.approx(float(want.mean()), abs=1e-5)
    assert is_per_example_mean(completion_loss)  # the feature store may take the batched layer path
    logp, mask = token_logprobs(logits, labels)
    assert logp.shape == mask.shape == (3, 6) and torch.equal(mask, labels[:, 1:] != IGNORE)
    # the shifted form (DGA's (x, y) rows) is the same computation
    assert torch.allclose(example_nll(logits[:, :-1], labels[:, 1:], shifted=True), want, atol=1e-5)


def test_only_completion_targets_move_the_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 9, generator=gen)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 4, 2, IGNORE]])  # prompt, prompt, prompt, reply, reply, pad
    base = float(completion_loss(logits, labels))
    for t in (0, 1, 4):  # logits predicting a prompt token (t + 1 = 1, 2) or the padding (t + 1 = 5)
        bumped = logits.clone()
        bumped[0, t] += torch.randn(9, generator=gen) * 5
        assert float(completion_loss(bumped, labels)) == pytest.approx(base, abs=0)
    bumped = logits.clone()
    bumped[0, 2] += torch.randn(9, generator=gen) * 5  # the logits predicting the first reply token
    assert float(completion_loss(bumped, labels)) != pytest.approx(base)
    other = labels.clone()
    other[0, 3] = 7  # another reply token
    assert float(completion_loss(logits, other)) != pytest.approx(base)


def test_prompt_completion_rows_are_batched_through_the_chat_template(lms) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lms["llama"])
    assert tok.chat_template == CHAT_TEMPLATE
    task = make_task(PAIRS, {"kind": "causal_lm"}, {"path": str(lms["llama"]), "max_length": 64}, "lm")
    assert isinstance(task, CausalLMTask)
    split = task.split("train")
    assert split.ids == ["e0", "e1", "e2", "e3"] and split.labels.shape == split.inputs["input_ids"].shape
    for i, (prompt, reply) in enumerate(zip(PAIRS["prompt"][:4], PAIRS["completion"][:4])):
        n = int(split.inputs["attention_mask"][i].sum())
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        whole = tok.apply_chat_template(chat, tokenize=False)
        assert tok.decode(split.inputs["input_ids"][i, :n]) == whole
        trained = split.labels[i][split.labels[i] != IGNORE]
        assert tok.decode(trained) == reply + "<|im_end|>\n"  # the reply and the template's end of turn
        assert (split.labels[i, n:] == IGNORE).all()  # padding
    # without a template: the prompt, then the completion and the end token
    tok.chat_template = None
    plain = CausalLMTask(PAIRS, {}, {"max_length": 64}, "lm", tokenizer=tok).split("test")
    trained = plain.labels[0][plain.labels[0] != IGNORE]
    assert tok.decode(trained) == "8" + tok.eos_token


def test_the_task_builds_the_model_from_the_resolver_and_its_loss_is_the_one_loss(lms) -> None:
    task = make_task(PAIRS, {"kind": "causal_lm"}, {"path": str(lms["gpt2"]), "max_length": 64, "lora": LORA})
    torch.manual_seed(0)
    model = task.build_model("lm")
    assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    split = task.split("train")
    with torch.no_grad():
        logits = model(**split.inputs).logits
    assert torch.equal(task.per_example_loss(logits, split.labels), example_nll(logits, split.labels))
    assert task.loss_fn is completion_loss
    with pytest.raises(DataError, match="prompt/completion"):
        CausalLMTask(PAIRS.drop("completion"), {}, {}, "lm", tokenizer=task.tokenizer).split("train")
    with pytest.raises(ConfigError, match="split 'val' has no examples"):
        task.split("val")


class Counting:
    """Wraps the one log-probability function and counts its callers' calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = causal_lm.token_logprobs

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def _char_policy() -> CharPolicy:
    torch.manual_seed(0)
    return CharPolicy(CharTokenizer("0123456789+-="), 5, 3, {"d_model": 16, "n_layer": 1, "n_head": 2},
                      torch.device("cpu"))


def test_fine_tune_warm_start_grpo_and_dga_compute_through_the_one_function(lms, monkeypatch) -> None:
    from datasel.mixing.task import training_loss

    counter = Counting()
    monkeypatch.setattr(causal_lm, "token_logprobs", counter)
    # the instruction fine-tune
    pol = load_lm(lms["gpt2"], LORA, torch.device("cpu"))
    split = CausalLMTask(PAIRS, {}, {"max_length": 64}, "lm", tokenizer=pol.tok).split("train")
    train_lora(pol.module, split, {"lr": 1e-3, "batch_size": 2}, -(-len(split) // 2), seed=0)
    assert counter.calls == 2  # two batches
    # the CurES warm start (and its loss is the per-example mean of the policy's completion tokens)
    char = _char_policy()
    before = counter.calls
    warm_start(char, ["1+2=", "2+2=", "3+3=", "1+1="], ["3", "4", "6", "2"],
               {"steps": 3, "batch_size": 2, "probe_size": 0, "target_accuracy": None}, seed=0)
    assert counter.calls - before == 3
    batch = char.teacher_batch(["1+2=", "33-4="], ["3", "29"])
    with torch.no_grad():
        logits = char.logits(batch.seqs, batch.attn)
        want = reference_nll(logits, batch.seqs.masked_fill(~batch.comp, IGNORE))
        assert torch.allclose(char.completion_nll(batch), want, atol=1e-5)
    # GRPO's policy log-probabilities (old, and one minibatch update)
    before = counter.calls
    trainer = GRPOTrainer(char, {"lr": 1e-3, "kl_coef": 0.0, "minibatch_size": 8}, seed=0)
    trainer.step(GRPOBatch(batch, torch.tensor([0, 0]), torch.tensor([1.0, 0.0])))
    assert counter.calls - before == 2
    with torch.no_grad():
        logits = char.logits(batch.seqs, batch.attn)
        ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.seqs[:, 1:, None]).squeeze(-1)
        assert torch.allclose(char.token_logprobs(batch.seqs, batch.attn), ref, atol=1e-5)
    # DGA's pretrained LM trains with the same loss (on already shifted rows); other models keep token_ce
    before = counter.calls
    x, y = torch.randn(2, 5, 9), torch.tensor([[1, 2, 3, IGNORE, IGNORE], [4, 5, 6, 7, 8]])
    assert float(training_loss({"name": "causal_lm"})(x, y)) == pytest.approx(
        float(example_nll(x, y, shifted=True).mean()))
    assert counter.calls - before == 2
    assert training_loss({"name": "tiny_gpt"}) is not training_loss({"name": "causal_lm"})


def _adapter_bytes(lms, seed: int) -> bytes:
    from datasel.runtime import seed_everything

    seed_everything(seed)
    pol = load_lm(lms["gpt2"], LORA, torch.device("cpu"))
    split = CausalLMTask(PAIRS, {}, {"max_length": 64}, "lm", tokenizer=pol.tok).split("train")
    cfg = {"lr": 5e-3, "batch_size": 2, "optimizer": "adamw", "schedule": "linear", "warmup_ratio": 0.25}
    hist = train_lora(pol.module, split, cfg, 2 * -(-len(split) // 2), seed)
    assert [h["epoch"] for h in hist] == [1, 2] and all(h["lr"] > 0 for h in hist)
    buf = io.BytesIO()
    torch.save(adapter_state(pol.module), buf)
    return buf.getvalue()


def test_the_fine_tune_gives_the_same_adapter_bytes_for_the_same_seed(lms) -> None:
    a, b, c = _adapter_bytes(lms, 0), _adapter_bytes(lms, 0), _adapter_bytes(lms, 1)
    assert a == b and a != c


STEP_SCRIPTS = sorted(p for p in (Path(__file__).parents[1] / "workflow" / "scripts").glob("*.py")
                      if p.name.startswith("instruct_") or p.stem in ("cures_prompts", "cures_warmstart", "cures_train"))


@pytest.mark.parametrize("script", STEP_SCRIPTS, ids=lambda p: p.stem)
def test_each_script_binds_its_steps_typed_arguments(script: Path, monkeypatch) -> None:
    """The two-line bridge: the script's lambda hands the step arguments its signature takes (no Snakemake object
    reaches the library)."""
    import inspect

    import datasel.snakemake_entry

    tree, module, name = script_step(script)
    real = getattr(module, name)
    assert "smk" not in inspect.signature(real).parameters
    bound = []
    monkeypatch.setattr(module, name, recording(real, bound))
    monkeypatch.setattr(datasel.snakemake_entry, "run_step", lambda smk, fn: fn(smk))
    exec(compile(tree, str(script), "exec"), {"snakemake": AnyJob()})
    assert len(bound) == 1
    assert not {n for n, v in bound[0].arguments.items() if v is None} - {"scores"}


def test_dga_alignment_on_a_pretrained_lm_uses_the_per_example_loss(lms) -> None:
    """ℓ_spe is the mean of the specific rows' own losses (rows of unequal length), and each pool row's alignment
    is its own loss's gradient against it."""
    from datasel.mixing.alignment import example_alignment, specific_gradient
    from datasel.models import build_model
    from datasel.tasks.causal_lm import shifted_loss

    torch.manual_seed(0)
    model = build_model({"name": "causal_lm", "path": str(lms["gpt2"]), "lora": None}, {"kind": "text"}).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (3, 6), generator=gen)
    y = torch.randint(0, 200, (3, 6), generator=gen)
    y[0, 2:] = IGNORE  # two trained tokens, then padding
    y[1, 5:] = IGNORE
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(rows: slice) -> torch.Tensor:
        g = torch.autograd.grad(example_nll(model(x[rows]), y[rows], shifted=True).sum(), params)
        return torch.cat([t.reshape(-1) for t in g])

    own = torch.stack([grad(slice(i, i + 1)) for i in range(3)])
    g_spe = specific_gradient(model, x, y, batch=2, loss_fn=shifted_loss)
    flat = torch.cat([g_spe[n].reshape(-1) for n, p in model.named_parameters() if p.requires_grad])
    torch.testing.assert_close(flat, own.mean(0), rtol=1e-4, atol=1e-7)
    dot, _ = example_alignment(model, x, y, g_spe, chunk_size=2, loss_fn=shifted_loss)
    torch.testing.assert_close(dot, own @ flat, rtol=1e-4, atol=1e-7)
