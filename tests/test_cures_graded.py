"""The graded prompt pool for chat models (source: graded), the answer reader on SmolLM2-style completions, the
saturated-rollout share, and the chat-template + LoRA policy on a tiny local GPT-2 (no download)."""

from __future__ import annotations

import operator
import re

import numpy as np
import pytest
import torch

from datasel.errors import ConfigError
from datasel.rl.answers import check_answer, completion_number
from datasel.rl.prompts import build_prompt_sets, generate_graded
from datasel.rl.sampling import saturated_share

torch.set_num_threads(1)

# the test's own reading of the questions: an operator per wording, so a wrong generator answer cannot agree with it
OPS = {"+": operator.add, "-": operator.sub, "×": operator.mul}
WORDING = {"buys": "+", "more get on": "+", "gave": "-", "sold": "-", "in each box": "×", "every day": "×"}


def reference(question: str) -> tuple[str, int, int, int]:
    """(op, a, b, a op b) read back from a generated question."""
    m = re.fullmatch(r"What is (\d+) ([-+×]) (\d+)\?.*", question)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    else:
        op = next(o for w, o in WORDING.items() if w in question)
        a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    return op, a, b, OPS[op](a, b)


def test_graded_problems_are_right_distinct_and_leveled() -> None:
    levels = ["add1", "sub2", "mul1", "add3", "mul2", "word"]
    rows = generate_graded(240, {"levels": levels, "instruction": " Reply with a number."}, np.random.default_rng(3))
    assert [r["level"] for r in rows] == levels * 40  # equal shares, in order
    assert len({r["question"] for r in rows}) == 240
    for r in rows:
        assert r["question"].endswith(" Reply with a number.")
        op, a, b, value = reference(r["question"])
        assert r["answer"] == str(value) and value >= 0
        if r["level"] != "word":
            digits = int(r["level"][-1])
            assert {"add": "+", "sub": "-", "mul": "×"}[r["level"][:3]] == op
            assert len(str(a)) == digits and len(str(b)) == digits and min(a, b) >= 1
        else:
            assert 2 <= b <= 12 and a <= 25


def test_graded_pool_is_deterministic_with_a_level_column() -> None:
    cfg = {"source": "graded", "graded": {"levels": ["add2", "word"]}, "sizes": {"warmstart": 2, "pool": 20, "heldout": 10}}
    a, b = build_prompt_sets(cfg, 7), build_prompt_sets(cfg, 7)
    assert a.equals(b) and not a.equals(build_prompt_sets(cfg, 8))
    pool = a.filter(a["split"] == "pool")
    assert sorted(set(pool["level"])) == ["add2", "word"] and (pool["level"] == "word").sum() == 10
    assert a["source"][0] == "graded"


@pytest.mark.parametrize("levels", [["add0"], ["div2"], ["word2"], []])
def test_unknown_levels_are_refused_with_the_key(levels) -> None:
    with pytest.raises(ConfigError) as err:
        generate_graded(4, {"levels": levels}, np.random.default_rng(0))
    assert err.value.field == "cures.prompts.graded.levels"


def test_a_level_too_small_for_the_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match="81"):
        generate_graded(100, {"levels": ["mul1"]}, np.random.default_rng(0))


# completions SmolLM2-135M-Instruct wrote for these prompts (temperature 0.7, chat template)
@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("7 + 5 = 12\n\nIn this literal interpretation, \"6\" is replaced with an imaginary number", "12", True),
        ("The answer is \"10\".", "12", False),
        ('The answer is "12".', "12", True),
        ("The answer to 352 + 479 is 831.", "831", True),
        ("352 + 479 = 925", "831", False),
        ("Tom has 3 + 4 = 7 apples now.", "7", True),
        ("Six multiplied by seven gives 42.", "42", True),
        ("In mathematics, 12 × 13 is equal to 156.", "156", True),
        ("12 × 13 = 196\n\nThis is a multi-digit multiplication problem, and the answer is 196.", "156", False),
        ("To solve this problem, we need to find the difference between 8 and 3.\n\nThe answer is 5.\n\nThis is a "
         "classic example of how math can be used", "5", True),
        ("There are 4 apples, Tom has 3 more.\n#### 7\nThe answer is 4.", "7", True),
        ("The answer is 6 and it is 6 × 7 = 42.", "42", False),
        ("47 + 38 = 40 + 30 + 7 + 8 = 85", "85", True),
        ("The final answer: -12", "-12", True),
        ("To add 47 and 38, we first need to add them together: 47 + 3", "85", False),
        ("8 - 3 is 5.", "5", True),
        ("I cannot answer that.", "5", False),
        ("To solve this problem, you need to convert 9 to a mixed number and then multiply that by 2.\n\n9 × 2 = 18",
         "18", True),
        ("18\n\nIn mathematical terms, 9 × 4 can be represented as 9 + 9 = 18 + 18 = 36", "36", False),
        ("Let's break it down step by step:\n\n1. 844 is a multiple of 3", "1189", False),
    ],
)
def test_answers_read_from_chat_completions(completion: str, answer: str, ok: bool) -> None:
    assert check_answer(completion, answer) is ok


def test_the_first_paragraph_rule_keeps_single_paragraph_working() -> None:
    assert completion_number("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.") == 72.0
    assert completion_number("5\n\nFor example 3 + 4 = 7") == 5.0  # a bare number is a stated answer
    assert completion_number("Add 3 and 4.\n\nThat is 7 in all") == 4.0  # no result anywhere: the first paragraph
    assert completion_number("") is None


def test_saturated_share_counts_rollouts_of_one_outcome_prompts() -> None:
    idx = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    rew = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=float)
    # prompt 0 all right (3), prompt 2 all wrong (4), prompt 3 a single right rollout (1); prompt 1 mixed (2)
    assert saturated_share(idx, rew) == pytest.approx(8 / 10)
    assert np.isnan(saturated_share(np.zeros(0, dtype=int), np.zeros(0)))


# ---------------------------------------------------------------- the chat-template + LoRA policy
@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = "0123456789+-=?WhatisU:A \n<>|"
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(dict.fromkeys(chars))}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}U:{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}A:{% endif %}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=1,
                                         eos_token_id=1, pad_token_id=0))
    path = tmp_path_factory.mktemp("chat")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _policy(path: str, **cfg):
    from datasel.rl.policy import build_policy

    torch.manual_seed(0)
    return build_policy({"kind": "hf", "model": {"path": path}, "max_new_tokens": 4, **cfg}, [], [], torch.device("cpu"))


def test_chat_template_renders_each_prompt_as_a_user_turn(chat_dir) -> None:
    pol = _policy(chat_dir)  # null: the tokenizer has a template, so it is used
    ids, attn = pol.encode_prompts(["What is 1+2?"])
    assert pol.tok.decode(ids[0][attn[0].bool()]) == "U:What is 1+2?\nA:"
    plain = _policy(chat_dir, chat_template=False)
    ids, attn = plain.encode_prompts(["What is 1+2?"])
    assert plain.tok.decode(ids[0][attn[0].bool()]) == "What is 1+2?"


def test_lora_policy_grad_norms_checkpoint_and_training(chat_dir) -> None:
    from datasel.rl.grpo import GRPOBatch, GRPOTrainer
    from datasel.rl.policy import load_policy

    pol = _policy(chat_dir, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in pol.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ro = pol.sample(["What is 1+2?", "What is 33-4?"] * 2, generator=torch.Generator().manual_seed(0))
    # the embedding is frozen under LoRA, yet CurES's norm is still the gradient over it: check against autograd
    fast = pol.embedding_grad_norms(ro.seqs, ro.attn, ro.comp)
    emb = pol.module.get_input_embeddings().weight
    emb.requires_grad_(True)
    for i in range(len(ro.texts)):
        emb.grad = None
        (pol.token_logprobs(ro.seqs[i:i + 1], ro.attn[i:i + 1]) * ro.comp[i:i + 1, 1:]).sum().backward()
        assert float(fast[i]) == pytest.approx(float(emb.grad.norm()), rel=1e-4)
    emb.requires_grad_(False)
    emb.grad = None
    base = {n: p.detach().clone() for n, p in pol.module.named_parameters() if not p.requires_grad}
    batch = GRPOBatch(ro, torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    tr = GRPOTrainer(pol, {"lr": 0.05, "kl_coef": 0.01}, seed=0)
    for _ in range(3):
        tr.step(batch)
    assert all(torch.equal(p, base[n]) for n, p in pol.module.named_parameters() if not p.requires_grad)
    ck = pol.checkpoint()
    assert "state_dict" not in ck and set(ck["adapters"]) == set(trainable)
    back = load_policy(ck, torch.device("cpu"))
    assert back.chat_template and back.lora == pol.lora
    with torch.no_grad():
        assert torch.allclose(back.logits(ro.seqs, ro.attn), pol.logits(ro.seqs, ro.attn), atol=1e-6)
        assert not torch.allclose(_policy(chat_dir).logits(ro.seqs, ro.attn), pol.logits(ro.seqs, ro.attn), atol=1e-4)


def test_zero_warm_start_steps_leave_the_policy_as_it_is(chat_dir) -> None:
    from datasel.rl.warmstart import warm_start

    pol = _policy(chat_dir, lora={"r": 4, "alpha": 8, "target_modules": None})
    before = {n: p.detach().clone() for n, p in pol.module.named_parameters()}
    assert warm_start(pol, ["What is 1+1?"] * 8, ["2"] * 8, {"steps": 0}, seed=0) == []
    assert all(torch.equal(p, before[n]) for n, p in pol.module.named_parameters())


def test_warm_start_steps_without_prompts_are_refused(chat_dir) -> None:
    from datasel.rl.warmstart import warm_start

    with pytest.raises(ConfigError) as err:
        warm_start(_policy(chat_dir), [], [], {"steps": 5}, seed=0)
    assert err.value.field == "cures.prompts.sizes.warmstart"


def test_report_weights_the_saturated_share_by_the_rollouts_of_each_iteration() -> None:
    import polars as pl

    from datasel.report.cures_plots import saturation

    rows = [("grpo", 0, 1, 32, 0.5), ("grpo", 0, 2, 64, 0.25), ("grpo", 1, 1, 32, 1.0), ("grpo", 1, 2, 64, 0.0),
            ("cures", 0, 1, 10, 0.0), ("cures", 0, 2, 40, 1.0), ("cures", 0, 3, 40, float("nan"))]
    m = pl.DataFrame(rows, schema=["selection", "seed", "iteration", "rollouts", "value"], orient="row")
    m = m.with_columns(pl.lit("saturated_share").alias("metric"))
    acc = pl.DataFrame({"selection": ["grpo"], "seed": [0], "iteration": [0], "rollouts": [0], "value": [0.3],
                        "metric": ["accuracy"]})
    got = saturation(pl.concat([m, acc]))
    # grpo: (32·0.5 + 32·0.25 + 32·1 + 32·0) / 128; cures: (10·0 + 30·1) / 40, the NaN iteration skipped
    assert got == {"grpo": pytest.approx(56 / 128), "cures": pytest.approx(30 / 40)}
