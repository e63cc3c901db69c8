"""Contrastive triplets (``query``, ``positive``, ``negative`` text; ``set`` domain/general; ``split``
train/eval) for embedding models: the data kind GAPrune scores, prunes and retrains on.

The classification tasks' seam, read for retrieval: a split is a :class:`datasel.data.triplets.Triplets` (the
embedding model tokenizes its own batches, padded per batch as sentence-transformers does); the model is an
``hf_embedding`` (:class:`datasel.models.embedding.EmbeddingModel`); the logits of a batch are InfoNCE's cosine
similarities × ``scale`` of each query against every positive and hard negative of the batch, whose target is the
query's own positive, so the per-example loss is the inherited cross-entropy and its mean is InfoNCE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import polars as pl
import torch
from torch import nn

from datasel.data.triplets import Triplets
from datasel.errors import ConfigError
from datasel.tasks.base import Task


class TripletTask(Task):
    kind: ClassVar[str] = "triplets"
    call_contract: ClassVar[str] = "model.embed(texts, max_len) -> (batch, dim) embeddings (an EmbeddingModel)"

    def __init__(self, examples: pl.DataFrame | Triplets, meta: dict[str, Any], model_cfg: dict[str, Any]) -> None:
        self.triplets = examples if isinstance(examples, Triplets) else \
            Triplets.from_frame(examples, str(meta.get("source", "<triplets>")))
        self.meta = {**meta, "kind": self.kind}
        self.model_cfg = dict(model_cfg)
        self.num_classes = 0  # a retrieval task: a batch's classes are its own documents
        self.scale = float(meta.get("scale", 20.0))
        self.max_len = model_cfg.get("max_seq_len")

    def split(self, name: str, set_: str | None = None) -> Triplets:  # type: ignore[override]
        """The triplets of split ``name`` (train / eval), of one ``set_`` (domain / general) or all."""
        return self.triplets.where(set_, name)

    def logits(self, model: nn.Module, batch: Triplets) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE's logits of ``batch`` (graph kept) and their targets (query i's positive is column i)."""
        from datasel.training.embedding import similarity_logits

        q = model.embed(batch.query, self.max_len)
        p, n = model.embed(batch.positive, self.max_len), model.embed(batch.negative, self.max_len)
        logits = similarity_logits(q, p, n, self.scale)
        return logits, torch.arange(len(batch), device=logits.device)

    def batch_loss(self, model: nn.Module, batch: Triplets) -> torch.Tensor:
        """The mean InfoNCE of one batch, as retraining minimizes it."""
        from datasel.training.embedding import triplet_loss

        return triplet_loss(model, batch, self.scale, self.max_len)

    def training_batches(self, triplets: Triplets, batch_size: int,
                         seed: int) -> Callable[[int, torch.Generator], Iterator[Triplets]]:
        """Batches for :func:`datasel.training.loop.train_loop` (each epoch reshuffled; in-batch negatives)."""
        from datasel.training.embedding import epoch_batches

        return epoch_batches(triplets, batch_size, seed)

    def check_model(self, model: nn.Module, where: str) -> None:
        if not callable(getattr(model, "embed", None)):
            raise ConfigError(f"the model is a {type(model).__name__}, which cannot embed text", field=where,
                              fix="use an embedding model (name: hf_embedding)")
        probe = self.triplets.query[:2] or ["a probe sentence"]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.embed(probe, self.max_len)
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(probe):
            raise ConfigError(f"the model returned {getattr(out, 'shape', type(out).__name__)} for {len(probe)} "
                              "texts; an embedding model returns (batch, dim)", field=where,
                              fix=f"the model is called as {self.call_contract}")


def embedding_model_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``hf_embedding`` model config of a ``gaprune`` section (model, max_seq_len, device)."""
    from datasel.models.embedding import DEFAULT_EMBEDDING_MODEL

    return {"name": "hf_embedding", "path": cfg.get("model") or DEFAULT_EMBEDDING_MODEL,
            "max_seq_len": int(cfg.get("max_seq_len") or 128), "device": cfg.get("device", "auto")}
