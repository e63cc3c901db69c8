"""The Hugging Face causal-LM policy through the same interface: a tiny GPT-2 with a char tokenizer saved locally
(no download). Left padding, the tied head in the embedding-gradient norms, a GRPO step and a warm-start batch."""

from __future__ import annotations

import pytest
import torch

from datasel.rl.grpo import GRPOBatch, GRPOTrainer
from datasel.rl.policy import HFPolicy, build_policy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate("0123456789+-=")}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                       bos_token_id=1, eos_token_id=1, pad_token_id=0))
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_hf_policy_sampling_and_embedding_grad_norms(hf_dir) -> None:
    pol = build_policy({"kind": "hf", "hf_path": hf_dir, "max_new_tokens": 4}, [], [], torch.device("cpu"))
    assert isinstance(pol, HFPolicy) and pol.module.get_output_embeddings().weight is pol.module.get_input_embeddings().weight
    ro = pol.sample(["12+3=", "7-9=", "1+1="] * 2, generator=torch.Generator().manual_seed(0))
    assert ro.seqs[1, 0] == pol.pad_id and ro.attn[1, 0] == 0  # left padding
    fast = pol.embedding_grad_norms(ro.seqs, ro.attn, ro.comp, chunk_size=4)
    for i in range(len(ro.texts)):
        pol.module.zero_grad()
        lp = pol.token_logprobs(ro.seqs[i:i + 1], ro.attn[i:i + 1])
        (lp * ro.comp[i:i + 1, 1:]).sum().backward()
        ref = float(pol.module.get_input_embeddings().weight.grad.norm())
        assert float(fast[i]) == pytest.approx(ref, rel=1e-4)


def test_hf_policy_trains(hf_dir) -> None:
    pol = build_policy({"kind": "hf", "hf_path": hf_dir, "max_new_tokens": 4}, [], [], torch.device("cpu"))
    batch = pol.teacher_batch(["1+2="] * 2 + ["33-4="] * 2, ["3", "5", "29", "1"])
    assert batch.comp.sum() == 1 + 1 + 1 + 1 + 2 + 1 + 1 + 1  # answer tokens plus the end token each
    assert (pol.completion_nll(batch) > 0).all()

    def seq_logp() -> torch.Tensor:
        with torch.no_grad():
            return (pol.token_logprobs(batch.seqs, batch.attn) * batch.comp[:, 1:]).sum(1)

    before = seq_logp()
    tr = GRPOTrainer(pol, {"lr": 1e-2, "kl_coef": 0.01}, seed=0)
    for _ in range(5):  # group 1: "29" rewarded, "1" not; group 0 has no spread
        tr.step(GRPOBatch(batch, torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 1.0, 1.0, 0.0])))
    after = seq_logp()
    assert after[2] > before[2] and after[3] < before[3]
