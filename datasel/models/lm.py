"""A pretrained causal LM as a registry model (``model: {name: causal_lm, source: smollm2, lora: {...}}``).

``forward(idx) -> logits (B, T, V)`` in float32, the interface of the char-level TinyGPT, so DGA's text mixture
(and anything else that trains a token model through the registry) runs on a real LM unchanged. The model comes
through :mod:`datasel.models.causal_lm` (the packaged SmolLM2-135M-Instruct by default; a folder, a .gguf file or a
cached hub name with ``path``/``gguf_file``). ``lora: {r, alpha, dropout, target_modules}`` (targets default per
architecture) trains adapters only; ``lora: null`` trains every weight. Text rows are tokenized with the model's own
tokenizer (:class:`datasel.tasks.causal_lm.LMTextEncoder`), right-padded; padded targets are -100, which the cross-entropy ignores, and
causal attention keeps real tokens from seeing the padding.

Checkpoints hold only the trainable weights (``checkpoint_keys``): the base comes back from the model source.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datasel.models.registry import register_model
from datasel.tasks.causal_lm import LMTextEncoder

LM_DEFAULTS: dict[str, Any] = {"source": None, "path": None, "gguf_file": None, "dtype": "auto",
                               "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}}


def lm_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {**LM_DEFAULTS, **cfg}
    if out.get("lora") is not None:
        out["lora"] = {**LM_DEFAULTS["lora"], **out["lora"]}
    return out


def model_source(cfg: dict[str, Any], where: str) -> str:
    from datasel.models.locate import lm_source

    return lm_source({k: cfg[k] for k in ("source", "path", "gguf_file") if cfg.get(k)}, where)


class CausalLMLogits(nn.Module):
    """``forward(idx) -> logits`` over a Hugging Face causal LM (right padding needs no mask: attention is causal)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=idx).logits.float()

    def checkpoint_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}


@register_model("causal_lm", kinds=("text", "causal_lm"))
def build_causal_lm(cfg: dict[str, Any], meta: dict[str, Any], where: str = "model") -> nn.Module:
    from datasel.models.causal_lm import add_lora, load_causal_lm
    from datasel.runtime import pick_device

    settings = lm_settings(cfg)
    # dtype auto follows the device the job will use (bf16 on a GPU); the model is built on the CPU and moved
    lm, _ = load_causal_lm(model_source(settings, where), "cpu", settings["dtype"], where)
    if settings["dtype"] == "auto" and pick_device("auto").type == "cuda":
        from datasel.models.causal_lm import resolve_dtype

        lm = lm.to(resolve_dtype("auto", "cuda"))
    if settings.get("lora") is not None:
        lm = add_lora(lm, settings["lora"], f"{where}.lora.target_modules")
    return CausalLMLogits(lm)


def text_encoder(model_cfg: dict[str, Any] | None, texts: list[str], where: str) -> LMTextEncoder | None:
    """The tokenizer-based encoder when ``model_cfg`` names a causal LM, else None (char-level text)."""
    if not model_cfg or model_cfg.get("name") != "causal_lm":
        return None
    from datasel.models.causal_lm import load_tokenizer

    return LMTextEncoder(load_tokenizer(model_source(lm_settings(model_cfg), where), where), texts)
