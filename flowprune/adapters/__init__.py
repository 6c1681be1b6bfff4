"""Model-family knowledge as data, keyed by Hugging Face ``config.model_type``.

``table``: one :class:`Adapter` per family (config keys of widths, heads, layer count; the layer list's
path; per-layer config lists; cache conventions; normalisation classes), and one derived from the config
for any other family.  ``layers``: the layer lists and the config/index bookkeeping after deleting
layers.  ``modules``: scoring keyword inputs, the KV cache, stubs and norms.

Sits below graph, rewrite, score and saving: imports nothing of flowprune but ``errors``, ``_tree`` and
``_runtime``.

>>> from flowprune.adapters import adapter_for, layer_stacks
>>> adapter_for(model).layer_paths, layer_stacks(model)
(('layers',), ['model.layers'])
"""

from __future__ import annotations

from .layers import layer_stacks, num_layers, renumber, sync_config
from .modules import cache_slot, fill_cache_slot, is_norm, is_stub, kv_cache, scoring_kwargs
from .table import ADAPTERS, GENERIC, HEAD_ATTRS, Adapter, adapter_for, derive

__all__ = [
    "ADAPTERS",
    "GENERIC",
    "HEAD_ATTRS",
    "Adapter",
    "adapter_for",
    "derive",
    "layer_stacks",
    "num_layers",
    "renumber",
    "sync_config",
    "cache_slot",
    "fill_cache_slot",
    "is_norm",
    "is_stub",
    "kv_cache",
    "scoring_kwargs",
]
