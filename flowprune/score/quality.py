"""How good a (pruned) model is on held-out data: perplexity for causal LMs, and for models without
next-token logits (encoders) the similarity of their pooled outputs to the original model's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Iterable

import torch

from .._runtime import call_model, eval_mode
from ..adapters import scoring_kwargs
from .losses import hidden_of, lm_loss, logits_of


def perplexity(model: torch.nn.Module, data: Iterable[dict]) -> float:
    """exp(mean next-token NLL) of a causal LM over batches of ``{"input_ids": ...}`` (padding masked
    by ``attention_mask`` when given).

    >>> flowprune.score.perplexity(model, flowprune.data.python_docs(tok, split="test"))
    """
    total, count = 0.0, 0.0
    with torch.no_grad(), eval_mode(model):
        for batch in data:
            out = (
                model(**{**batch, **scoring_kwargs(model)})
                if isinstance(batch, Mapping)
                else model(batch)
            )
            per = lm_loss(out, batch)  # [B] mean NLL per sequence
            tokens = (
                batch["attention_mask"][:, 1:].sum(1).float()
                if "attention_mask" in batch
                else torch.full_like(per, batch["input_ids"].shape[1] - 1)
            )
            total += float((per * tokens).sum())
            count += float(tokens.sum())
    return math.exp(total / max(count, 1))


def similarity(model: torch.nn.Module, original: torch.nn.Module, data: Iterable[Any]) -> float:
    """Mean cosine similarity between the mean-pooled outputs of ``model`` and ``original`` (padding
    masked by ``attention_mask``): how close a pruned encoder's embeddings stay, where perplexity does
    not apply.  1.0 = identical directions.

    >>> flowprune.score.similarity(small, model, flowprune.data.python_docs(tok, split="test"))
    """

    def pooled(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        out = call_model(m, batch)
        h = logits_of(out) if getattr(out, "last_hidden_state", None) is None else None
        h = hidden_of(out) if h is None else h
        h = h.float().reshape(h.shape[0], -1, h.shape[-1]) if h.dim() > 2 else h.float()[:, None]
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        w = (
            mask.to(h.device, h.dtype)[..., None]
            if mask is not None and mask.shape == h.shape[:2]
            else torch.ones_like(h[..., :1])
        )
        return (h * w).sum(1) / w.sum(1).clamp_min(1)  # [B, T, D] -> [B, D]

    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model), eval_mode(original):
        for batch in data:
            cos = torch.cosine_similarity(
                pooled(model, batch), pooled(original, batch), dim=-1
            )  # [B]
            total += float(cos.sum())
            count += len(cos)
    return total / max(count, 1)
