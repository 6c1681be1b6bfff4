"""The layer lists of a Hugging Face model, and keeping its config and layer indices right after layers
are deleted from them.

Known families name their list (``Adapter.layer_paths``); any other model with a config uses the generic
rule: every ``nn.ModuleList`` of one module type whose length is ``config.num_hidden_layers``.

>>> layer_stacks(llama)
['model.layers']
"""

from __future__ import annotations

from torch import nn

from .table import Adapter, adapter_for


def num_layers(model: nn.Module) -> int | None:
    """The layer count in ``model.config`` (None without a config, or for per-stage families).

    >>> num_layers(gpt2)   # config.n_layer
    2
    """
    config = getattr(model, "config", None)
    return adapter_for(model).layer_count(config) if config is not None else None


def _expand(model: nn.Module, path: str) -> list[str]:
    """Full paths for an adapter path: under the base model when there is one, "*" expanded over a
    ModuleList's entries; [] when it does not resolve."""
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "") or ""
    for root in ([prefix] if prefix and prefix in modules else []) + [""]:
        found = [root]
        for part in path.split("."):
            if part == "*":
                found = [
                    f"{f}.{i}" if f else str(i)
                    for f in found
                    if isinstance(modules.get(f), nn.ModuleList)
                    for i in range(len(modules[f]))
                ]
            else:
                found = [p for f in found if (p := f"{f}.{part}" if f else part) in modules]
        if found:
            return found
    return []


def _known_stacks(model: nn.Module, ad: Adapter) -> list[str] | None:
    """The adapter's layer lists if one of its paths resolves to ModuleLists of the config's counts."""
    counts = ad.stage_counts(model.config)
    modules = dict(model.named_modules())
    for path in ad.layer_paths:
        found = _expand(model, path)
        if (
            counts is not None
            and found
            and [len(modules[p]) if isinstance(modules[p], nn.ModuleList) else -1 for p in found]
            == counts
        ):
            return found
    return None


def _generic_stacks(model: nn.Module) -> list[str]:
    n = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(n, int):
        return []
    # a list of different modules is not a layer stack: T5's [self-attention, FFN] per block, RWKV's
    # first block with its extra pre_ln, vision stages of different widths; deleting from it would hand
    # a layer another one's place (an identity stub stands in for a removed layer instead)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and len({_structure(x) for x in m}) == 1
    ]


def _structure(m: nn.Module) -> tuple:
    return (
        tuple((k, type(x).__name__) for k, x in m.named_modules()),
        tuple((k, tuple(p.shape)) for k, p in m.named_parameters()),
    )


def layer_stacks(model: nn.Module) -> list[str]:
    """Paths of the ``nn.ModuleList``s holding a HF model's layers (deleting from them is supported):
    the family's own list(s) when they match the config, else the generic rule.

    >>> layer_stacks(convnext)   # one list per stage
    ['encoder.stages.0.layers', 'encoder.stages.1.layers']
    """
    if getattr(model, "config", None) is None:
        return []
    ad = adapter_for(model)
    known = _known_stacks(model, ad) if ad.known else None
    return known if known is not None else _generic_stacks(model)


def sync_config(model: nn.Module, stack: str, removed: list[int], old_len: int) -> None:
    """After deleting layers ``removed`` (indices before deletion) from the list at ``stack`` that held
    ``old_len`` layers, keep ``model.config`` describing the model (so ``from_pretrained`` rebuilds it):
    the layer count and per-layer lists are cut, or the stage's depth for per-stage families.  A list
    the config does not count (its length is not the layer count) leaves the config alone.

    >>> sync_config(model, "model.layers", [1, 2], 4)   # num_hidden_layers 4 -> 2, layer_types cut
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    ad = adapter_for(model)
    if ad.stage_depths and ad.layer_paths:
        for path in ad.layer_paths:
            stages = _expand(model, path)  # by path, not by count: the counts just changed
            if stack in stages:
                k = stages.index(stack)
                depths = getattr(config, ad.stage_depths)
                setattr(
                    config,
                    ad.stage_depths,
                    type(depths)(d - len(removed) if i == k else d for i, d in enumerate(depths)),
                )
                return
        return
    key = ad.layers or "num_hidden_layers"
    if getattr(config, key, None) != old_len:
        return
    keep = [i for i in range(old_len) if i not in set(removed)]
    setattr(config, key, len(keep))
    for name, value in list(vars(config).items()):
        if name in ad.keep or name.startswith("_"):
            continue
        if isinstance(value, (list, tuple)) and (len(value) == old_len or name in ad.per_layer):
            try:
                setattr(config, name, type(value)(value[i] for i in keep))
            except (
                Exception
            ):  # a strict config refuses it (HF validation): a pair, not per-layer values
                pass


def renumber(stack: nn.ModuleList, model: nn.Module) -> None:
    """Set ``layer_idx`` (and the family's other index attributes) of every module of layer j to j: the
    KV cache is indexed by it.

    >>> renumber(small.model.layers, small)   # self_attn.layer_idx: 0, 2, 3 -> 0, 1, 2
    """
    attrs = adapter_for(model).layer_index_attrs
    for j, layer in enumerate(stack):
        for m in layer.modules():
            for a in attrs:
                if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool):
                    setattr(m, a, j)
