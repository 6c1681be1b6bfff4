"""Rules about single modules and calls that every layer of flowprune shares: the keyword inputs used
while scoring, the Hugging Face KV cache, flowprune's own stubs and normalisation layers.

>>> scoring_kwargs(llama)
{'use_cache': False}
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from torch import nn

from .table import adapter_for

# normalisation layers of torch itself (BatchNorm*, InstanceNorm*, LayerNorm, GroupNorm, RMSNorm, ...)
_TORCH_NORMS: tuple[type, ...] = tuple(
    t
    for t in (
        getattr(nn.modules.batchnorm, "_NormBase", None),
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
# a model outside the table has no list: its norm classes are known only by their usual names
# (T5LayerNorm, MambaRMSNormGated, a user's ChannelNorm2d, ...)
_NORM_NAME = re.compile(r"Norm")


def scoring_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword inputs added to dict batches while scoring: ``use_cache=False`` when the forward takes it
    (nothing is generated, and replaying a batch must have no side effects); the family's flag
    answers when the signature cannot be read.

    >>> model(**{**batch, **scoring_kwargs(model)})
    """
    try:
        takes = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        takes = adapter_for(model).use_cache
    return {"use_cache": False} if takes else {}


def kv_cache(kwargs: dict[str, Any]) -> Any:
    """The Hugging Face KV cache among a module call's keyword inputs (a ``Cache``: it has ``update`` and
    ``get_seq_length``; duck-typed so no transformers import is needed), else None."""
    for v in kwargs.values():
        if hasattr(v, "update") and hasattr(v, "get_seq_length"):
            return v
    return None


def cache_slot(module: nn.Module | None) -> int | None:
    """The KV-cache slot (``layer_idx``) of a module: a stub standing for it must still fill the slot.

    >>> cache_slot(llama.model.layers[1].self_attn)
    1
    """
    i = getattr(module, "layer_idx", None) if module is not None else None
    return i if isinstance(i, int) and not isinstance(i, bool) else None


def fill_cache_slot(kwargs: dict[str, Any], slot: int | None, x: Any) -> None:
    """Append an empty entry (no keys, no values) to the KV cache in ``kwargs`` at ``slot`` for a removed
    attention module whose input is ``x`` [B, T, ...], so the cache's length (``get_seq_length``) stays
    right during ``generate``.

    >>> fill_cache_slot({"past_key_values": cache}, 0, hidden)   # cache.update([B,1,T,0], ..., 0)
    """
    cache = kv_cache(kwargs)
    if cache is None or slot is None or x is None:
        return
    empty = x.new_zeros(x.shape[0], 1, x.shape[1], 0)  # [B, heads=1, T, head_dim=0]
    cache.update(empty, empty, slot)


def is_stub(module: nn.Module) -> bool:
    """Whether flowprune put this module in (a stub of a removal): read from the ``flowprune_stub`` class
    attribute, so it is never offered for removal again and its tensors are saved as fills."""
    return bool(getattr(type(module), "flowprune_stub", False))


def is_norm(module: nn.Module, model: nn.Module | None = None) -> bool:
    """Whether ``module`` is a normalisation layer: a torch norm or, for a family in the table, one of
    its norm classes (``Adapter.norms``); for any other model, a class named like one (``...Norm...``).

    >>> is_norm(llama.model.norm, llama)   # LlamaRMSNorm
    True
    """
    if isinstance(module, _TORCH_NORMS):
        return True
    ad = adapter_for(model) if model is not None else None
    if ad is not None and ad.known:
        return type(module).__name__ in ad.norms
    return bool(_NORM_NAME.search(type(module).__name__))
