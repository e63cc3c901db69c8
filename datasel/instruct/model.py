"""The causal LM of instruction-data runs: the packaged SmolLM2-135M-Instruct (the default), a local Hugging Face
folder, a GGUF file or a hub name in the local cache (resolved by :mod:`datasel.models.locate`, loaded through
:mod:`datasel.models.causal_lm` by :class:`datasel.rl.policy.HFPolicy`, never downloaded) with LoRA adapters
from peft; or, for tests and the embedded experiment, a small GPT-2 built from a ``transformers`` config with random
weights and a byte-level BPE tokenizer trained on the pool with ``tokenizers``.

Only the adapters train and are differentiated: a checkpoint holds their state (and the optimizer's moments), the
base weights come back from the folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasel.errors import DataError
from datasel.models.causal_lm import add_lora, check_model_folder, resolve_dtype  # noqa: F401 (check_model_folder: re-exported)
from datasel.rl.policy import HFPolicy
from datasel.store import atomic_path

log = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<|pad|>"


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
    with atomic_path(out, folder=True) as tmp:  # model and tokenizer appear together or not at all
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    return out


def load_lm(path: str | Path, lora: dict[str, Any], device: torch.device, dtype: str = "auto",
            max_new_tokens: int = 32, where: str = "training.model") -> HFPolicy:
    """The base LM (a folder, or a GGUF file through its cached conversion) with fresh LoRA adapters (seeded by the
    caller), wrapped in a policy for generation; ``where`` is the model's config section (named in errors).
    ``lora.target_modules`` null: the architecture's default."""
    resolve_dtype(dtype, device, f"{where}.dtype")  # refused under its own key before anything loads
    policy = HFPolicy(str(path), max_new_tokens, device, dtype, field=f"{where}.path")
    policy.module = add_lora(policy.module, lora, f"{where}.lora.target_modules", file=path).to(device)
    return policy


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor], file: str | Path) -> None:
    """Copy saved adapter weights into ``model``; refuses a checkpoint from another model or LoRA config."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(named) != set(state):
        raise DataError(f"checkpoint adapters do not fit the model ({len(state)} saved, {len(named)} expected)",
                        file=file, fix="rerun the proxy step with the current model config")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(state[n].to(p))


def build_tiny_lm(data: dict[str, Any], tiny: dict[str, Any], out: str | Path) -> Path:
    """The tiny GPT-2 of ``model.tiny`` with its tokenizer trained on the pool and target texts of ``data``
    (``data.instruct``), rendered without a chat template; long enough for ``data.max_length`` tokens."""
    from datasel.instruct.data import read_instructions, render

    texts = []
    for role in ("pool", "target"):
        _, rendered = render(read_instructions(data[role], role), data, None, data[role])
        texts += ["".join(r.parts) for r in rendered]
    settings = {**tiny, "n_positions": max(int(tiny["n_positions"]), int(data["max_length"]))}
    folder = Path(out)
    if folder.exists():  # the workflow's own output (Snakemake removes it before the job; a direct call may not)
        import shutil

        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(texts, folder, settings)
