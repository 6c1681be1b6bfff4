"""Scoring: the engine (gated model on calibration batches, with replay), exact ablation, Taylor and
Fisher terms, baselines, losses, and held-out quality (perplexity, similarity)."""

from .quality import perplexity, similarity

__all__ = ["perplexity", "similarity"]
