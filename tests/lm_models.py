"""Tiny causal LMs written locally for the model-resolver tests: a random llama and a random GPT-2 saved with
save_pretrained (with a byte-level BPE tokenizer and a chat template), and the llama written as a GGUF file with
gguf-py's writer, laid out as llama.cpp's converter lays it out (q/k rows permuted for its rotary layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = ["What is the capital of France? Paris.", "Add 2 and 3: 5", "The quick brown fox jumps over the lazy dog.",
         "def f(x):\n    return x + 1\n"] * 4


def byte_bpe_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_bpe_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_tiny_gpt2(out: Path, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_bpe_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(folder: Path, out: Path) -> Path:
    """The llama saved in ``folder`` as a float32 GGUF file with its byte-level BPE tokenizer and chat template."""
    import gguf
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    c = model.config
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    specials = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t, _ in vocab])
    merges = tok.backend_tokenizer.model.__getstate__()
    import json

    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(merges)["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: llama.cpp writes it once
            continue
        arr = t.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            arr = _permute(arr, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            arr = _permute(arr, c.num_key_value_heads)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def save_digit_llama(out: Path, seed: int = 0, spread: float = 0.1) -> Path:
    """The tiny llama, with the embeddings of the ten digits and of the last token of the chat template's generation
    prompt moved onto one shared direction. At random init the first reply token is then almost always one of those
    eleven, near uniformly (``spread`` sets how far each digit is from the shared direction), so a one-token rollout
    on a one-digit question is right about one time in ten and GRPO sees groups with mixed rewards."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    save_tiny_llama(out, seed)
    tok = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out)
    emb = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(emb.shape[1], generator=gen)
    text = tok.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True, tokenize=False)
    last = tok(text, add_special_tokens=False)["input_ids"][-1]
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    with torch.no_grad():
        emb[last] = shared
        for d in digits:
            emb[d] = shared + spread * torch.randn(emb.shape[1], generator=gen)
    model.save_pretrained(out)
    return out
