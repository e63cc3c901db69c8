"""The causal LM of the instruction chain: a local Hugging Face folder or a hub name in the local cache (resolved by
:mod:`datasel.instruct.hub`, loaded by :class:`datasel.rl.policy.HFPolicy`, never downloaded) with LoRA adapters
from peft; or, for tests and the embedded experiment, a small GPT-2 built from a ``transformers`` config with random
weights and a byte-level BPE tokenizer trained on the pool with ``tokenizers``.

Only the adapters train and are differentiated: a checkpoint holds their state (and the optimizer's moments), the
base weights come back from the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.rl.policy import HFPolicy

log = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<|pad|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny_model(texts: list[str], out: Path, cfg: dict[str, Any]) -> Path:
    """A random-init GPT-2 and a byte-level BPE tokenizer trained on ``texts``, saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(cfg["vocab_size"]), special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)
    torch.manual_seed(int(cfg["seed"]))
    config = GPT2Config(vocab_size=len(fast), n_positions=int(cfg["n_positions"]), n_embd=int(cfg["n_embd"]),
                        n_layer=int(cfg["n_layer"]), n_head=int(cfg["n_head"]), resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id,
                        pad_token_id=fast.pad_token_id)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def check_model_folder(path: str | Path, where: str) -> Path:
    """A local causal-LM folder with a config and a tokenizer, or a clear refusal naming what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"model folder {str(path)!r} does not exist", file=p, field=where,
                          fix="give a local folder saved with save_pretrained or a hub name in the local cache (nothing "
                              "is downloaded), or set instruct.model.tiny to build a small GPT-2")
    if not (p / "config.json").exists():
        raise DataError("the model folder has no config.json", file=p, field=where,
                        fix="save the model with model.save_pretrained(folder)")
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        raise DataError("the model folder has no tokenizer (no tokenizer.json / tokenizer_config.json / vocab)",
                        file=p, field=where, fix="save the tokenizer beside the model: tokenizer.save_pretrained(folder)")
    return p


def lora_candidates(model: nn.Module) -> list[str]:
    """Leaf names of the modules LoRA can wrap (Linear, Conv1D, Embedding), for error messages."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if type(m).__name__ in ("Linear", "Conv1D", "Embedding") and n}
    return sorted(names)


def load_lm(path: str | Path, lora: dict[str, Any], device: torch.device, dtype: str = "auto",
            max_new_tokens: int = 32, where: str = "instruct.model.path") -> HFPolicy:
    """The base LM with fresh LoRA adapters (seeded by the caller), wrapped in a policy for generation."""
    import peft

    folder = check_model_folder(path, where)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", field="instruct.model.dtype", fix=f"use one of {list(DTYPES)}")
    if dtype == "auto":  # half precision only where it is fast and safe: a GPU; CPUs train in fp32
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.type == "cuda" else "float32"
    policy = HFPolicy(str(folder), max_new_tokens, device, dtype, field=where)
    targets = list(lora["target_modules"])
    have = lora_candidates(policy.module)
    names = [n for n, _ in policy.module.named_modules()]
    # peft matches a target by the module's full name or a dotted suffix of it ("c_attn", "attn.c_attn")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"LoRA target module(s) {missing} do not exist in the model", file=folder,
                          field="instruct.model.lora.target_modules", fix=f"use some of: {', '.join(have)}")
    for p in policy.module.parameters():
        p.requires_grad_(False)
    lcfg = peft.LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                           target_modules=targets, task_type="CAUSAL_LM")
    policy.module = peft.get_peft_model(policy.module, lcfg).to(device)
    # adapters train in fp32 even on a half-precision base (their moments and updates are tiny numbers)
    for n, p in policy.module.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return policy


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor], file: str | Path) -> None:
    """Copy saved adapter weights into ``model``; refuses a checkpoint from another model or LoRA config."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(named) != set(state):
        raise DataError(f"checkpoint adapters do not fit the model ({len(state)} saved, {len(named)} expected)",
                        file=file, fix="rerun the warm-up / fine-tune step with the current instruct.model config")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(state[n].to(p))
