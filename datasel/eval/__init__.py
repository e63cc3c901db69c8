"""Evaluation metrics shared by stages (retrieval quality for embedding models)."""
