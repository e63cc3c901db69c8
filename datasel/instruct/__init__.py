"""Instruction-tuning data selection for causal LMs: the LESS chain (warm-up, LoRA gradient features, score, select, fine-tune, evaluate)."""
