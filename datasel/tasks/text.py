"""Text classification (``text`` column): token ids and attention masks from a Hugging Face tokenizer.

The whole examples table is tokenized once per task (one job), padded to ``max_length`` so an example's tokens never
depend on which other texts share its batch (scores and gradient features stay per-example).
"""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
import torch

from datasel.models.hf import load_tokenizer, model_settings
from datasel.tasks.base import Task


class TextTask(Task):
    kind: ClassVar[str] = "text"
    call_contract: ClassVar[str] = "model(input_ids=..., attention_mask=...) with (batch, max_length) long tensors"

    def __init__(self, examples: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any],
                 where: str = "model") -> None:
        super().__init__(examples, meta, model_cfg)
        self.max_length = int(model_settings(model_cfg)["max_length"])
        self.tokenizer = load_tokenizer(model_cfg, where)
        if self.tokenizer.pad_token is None:  # GPT-style tokenizers: pad with end-of-text (masked out anyway)
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        ordered = examples.sort("example_id")
        enc = self.tokenizer(ordered.get_column("text").cast(pl.String).fill_null("").to_list(),
                             padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        self._row = {eid: i for i, eid in enumerate(ordered.get_column("example_id").to_list())}
        self._ids, self._mask = enc["input_ids"].long(), enc["attention_mask"].long()

    def _load(self, part: pl.DataFrame) -> dict[str, torch.Tensor]:
        idx = torch.tensor([self._row[e] for e in part.get_column("example_id").to_list()], dtype=torch.long)
        return {"input_ids": self._ids[idx], "attention_mask": self._mask[idx]}
