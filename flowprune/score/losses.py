"""Losses as per-sample vectors [B] (the mean is the calibration loss; per-sample values feed Fisher).

``lm``: causal-LM NLL; ``ce``: cross-entropy with the batch's labels; ``distill``: label-free, KL from
the original model's logits (or 1 − cos to its hidden states when there are no logits).  Token losses
are averaged over the batch's real tokens: ``attention_mask`` ([B, T], 0 = padding) drops padded ones.

Or any callable ``(outputs, batch) -> scalar tensor``, or ``(outputs, batch, reference) -> scalar``
whose ``reference`` is the original (unpruned) model's output on the same batch, recorded once, without
gradient (do not modify it in place).  It is passed when the callable has a parameter named
``reference`` (then by keyword) or three required positional parameters.  E.g. keep sentence
embeddings (mask-aware mean pooling) close to the original model's:

>>> def embedding_loss(out, batch, reference):
...     mask = batch["attention_mask"][..., None].float()            # [B, T, 1]
...     pool = lambda h: (h * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B, T, D] -> [B, D]
...     e, e0 = pool(out.last_hidden_state), pool(reference.last_hidden_state)
...     return (1 - torch.cosine_similarity(e, e0, dim=-1)).mean()
>>> report = flowprune.analyze(encoder, batches, loss=embedding_loss)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .._tree import tensor_leaves
from ..data import split_batch
from ..errors import InputError

LossSpec = str | Callable[..., torch.Tensor]  # (outputs, batch) or (outputs, batch, reference)


def logits_of(out: Any) -> torch.Tensor | None:
    """Logits of a model output: ``.logits``/``["logits"]``, the output itself if it is a tensor, or the
    first floating tensor of a plain tuple/list output (``(logits, aux)``)."""
    if isinstance(out, torch.Tensor):
        return out
    lg = getattr(out, "logits", None)
    if lg is None and isinstance(out, Mapping):
        lg = out.get("logits")
    if lg is None and type(out) in (tuple, list):
        lg = next((t for t in tensor_leaves(out) if t.is_floating_point()), None)
    return lg


def hidden_of(out: Any) -> torch.Tensor:
    """The representation to compare when a model has no logits (``last_hidden_state`` or first tensor)."""
    h = getattr(out, "last_hidden_state", None)
    return h if h is not None else tensor_leaves(out)[0]


def _token_mask(inputs: Any, like: torch.Tensor) -> torch.Tensor:
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is None or mask.shape != like.shape[:2]:
        return torch.ones(like.shape[:2], device=like.device)
    return mask.to(like.device, like.dtype)


def _per_sample_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # values, mask: [B, T] -> [B]; a masked value counts as 0 even if it is inf/NaN (padding garbage)
    return torch.where(mask > 0, values * mask, values.new_zeros(())).sum(1) / mask.sum(
        1
    ).clamp_min(1)


def lm_loss(out: Any, batch: Any, ref: Any = None) -> torch.Tensor:
    inputs, _ = split_batch(batch)
    ids = inputs["input_ids"] if isinstance(inputs, Mapping) else inputs
    lg = logits_of(out)
    if lg is None or lg.dim() != 3:
        raise InputError("loss='lm' needs [batch, tokens, vocab] logits from the model")
    nll = F.cross_entropy(lg[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return _per_sample_mean(nll.view(ids.shape[0], -1), _token_mask(inputs, lg)[:, 1:])


def ce_loss(out: Any, batch: Any, ref: Any = None) -> torch.Tensor:
    _, labels = split_batch(batch)
    if labels is None:
        raise InputError(
            "loss='ce' needs labels: batches as (inputs, labels) or dicts with a 'labels' key; "
            "or use loss='distill', which needs none"
        )
    lg = logits_of(out).float()
    if lg.dim() == 2:
        return F.cross_entropy(lg, labels, reduction="none")
    ce = F.cross_entropy(lg.flatten(0, -2), labels.flatten(), reduction="none", ignore_index=-100)
    valid = (labels != -100).float()
    return _per_sample_mean(ce.view(labels.shape), valid)


def kl_per_sample(logp_ref: torch.Tensor, logq: torch.Tensor, inputs: Any) -> torch.Tensor:
    """KL(p_ref || q) from log-probabilities: per sample [B] (mean over valid tokens for sequences)."""
    return reduce_per_sample((logp_ref.exp() * (logp_ref - logq)).sum(-1), inputs)


def reduce_per_sample(values: torch.Tensor, inputs: Any) -> torch.Tensor:
    """[B] values as they are; [B, T, ...] token values -> their mean over valid tokens, per sample."""
    if values.dim() == 1:
        return values
    return _per_sample_mean(values.flatten(1), _token_mask(inputs, values.flatten(1)))


def distill_loss(out: Any, batch: Any, ref: Any) -> torch.Tensor:
    inputs, _ = split_batch(batch)
    lg, lg_ref = logits_of(out), logits_of(ref)
    if lg is not None and lg_ref is not None:
        return kl_per_sample(
            F.log_softmax(lg_ref.float(), -1), F.log_softmax(lg.float(), -1), inputs
        )
    h, h_ref = hidden_of(out).float(), hidden_of(ref).float()
    # [B, T, D]: cosine per token, averaged over real tokens; [B, C, H, W] or [B, D]: cosine per sample
    dim = -1 if h.dim() == 3 else 1
    cos = F.cosine_similarity(
        h if h.dim() <= 3 else h.flatten(1), h_ref if h.dim() <= 3 else h_ref.flatten(1), dim=dim
    )
    return reduce_per_sample(1 - cos, inputs)  # [B, T] -> [B] over attention_mask; [B] as is


BUILTIN: dict[str, Callable] = {"lm": lm_loss, "ce": ce_loss, "distill": distill_loss}


def takes_reference(fn: Callable) -> str | None:
    """How a loss callable takes the original model's output: "keyword" (a parameter named
    ``reference``), "positional" (three required positional parameters) or None ``(outputs, batch)``.

    >>> takes_reference(lambda out, batch: 0), takes_reference(lambda out, batch, ref: 0)
    (None, 'positional')
    """
    try:  # an nn.Module's __call__ is (*args, **kwargs): read its forward
        params = inspect.signature(fn.forward if isinstance(fn, torch.nn.Module) else fn).parameters
    except (TypeError, ValueError):
        return None
    p = params.get("reference")
    if p is not None and p.kind is not inspect.Parameter.POSITIONAL_ONLY:
        return "keyword"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p for p in params.values() if p.kind in positional and p.default is inspect.Parameter.empty
    ]
    return "positional" if len(required) >= 3 else None


def resolve(loss: LossSpec) -> tuple[Callable[[Any, Any, Any], torch.Tensor], bool]:
    """(per-sample loss fn(out, batch, ref) -> [B] or scalar, whether it is per-sample).  A callable gets
    ``ref`` (the original model's output) when it asks for it (see ``takes_reference``)."""
    if isinstance(loss, str):
        if loss not in BUILTIN:
            raise InputError(
                f"unknown loss {loss!r}: use 'lm', 'ce', 'distill' or a callable (outputs, batch) "
                f"-> scalar or (outputs, batch, reference) -> scalar"
            )
        return BUILTIN[loss], True
    if callable(loss):
        how = takes_reference(loss)
        if how == "keyword":
            return (lambda out, batch, ref: loss(out, batch, reference=ref)), False
        if how == "positional":
            return (lambda out, batch, ref: loss(out, batch, ref)), False
        return (lambda out, batch, ref: loss(out, batch)), False
    raise InputError(f"loss must be a name or a callable, got {type(loss).__name__}")
