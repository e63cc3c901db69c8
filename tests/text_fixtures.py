"""Tiny text data and a tiny random-init BERT (with a tokenizer trained on the corpus) for fast text tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl

TOPICS = {
    "sport": ["ball", "goal", "team", "match", "score", "coach", "league", "player"],
    "food": ["bread", "soup", "salt", "bake", "cook", "taste", "dinner", "spice"],
    "code": ["python", "bug", "compile", "function", "loop", "array", "debug", "module"],
}
FILLER = ["the", "a", "of", "and", "with", "today", "very", "some", "is", "was"]


def corpus(n_per_class: int = 40) -> pl.DataFrame:
    """Deterministic sentences whose topic words give the class away (a classifier can learn it quickly)."""
    rows = []
    for c, (label, words) in enumerate(TOPICS.items()):
        for i in range(n_per_class):
            toks = [words[(i * 3 + k) % len(words)] if k % 2 == 0 else FILLER[(i + k * c) % len(FILLER)]
                    for k in range(6 + i % 5)]
            rows.append({"sentence": f"{' '.join(toks)} {i}", "topic": label})
    return pl.DataFrame(rows)


def tiny_bert(folder: Path, texts: list[str]) -> Path:
    """A 1-layer, 32-wide BERT with random weights and a WordLevel tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
