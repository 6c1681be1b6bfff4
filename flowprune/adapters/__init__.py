"""Model-family knowledge as data, keyed by ``config.model_type``.

The generic rules cover every Hugging Face family tested here: the layer stack is the ``nn.ModuleList``
whose length is ``config.num_hidden_layers``; after deleting layers, ``num_hidden_layers`` and every
config list with one entry per layer (``layer_types``, ...) are cut, and the ``layer_idx`` of each
remaining layer's modules is renumbered (the KV cache is indexed by it).  An entry here only adds what a
family needs beyond that.  An unknown family still works through the generic tracer and gates.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Adapter:
    """What a family needs beyond the generic rules."""

    layer_index_attrs: tuple[str, ...] = ("layer_idx", "layer_id", "layer_index")
    # config keys that are per-layer lists but whose length may differ from num_hidden_layers
    per_layer_keys: tuple[str, ...] = ()
    # config keys never to touch even if their length happens to equal num_hidden_layers
    keep_keys: tuple[str, ...] = ("architectures", "id2label", "label2id")


GENERIC = Adapter()

ADAPTERS: dict[str, Adapter] = {
    # Every family below is covered by the generic rules (tested in tests/test_zoo.py, test_hf_layers.py).
    name: GENERIC
    for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "opt", "gpt_neox",
                 "falcon", "bert", "roberta", "distilbert", "vit", "resnet", "convnext")
}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family (``GENERIC`` for unknown families and non-HF models)."""
    config = getattr(model, "config", None)
    return ADAPTERS.get(getattr(config, "model_type", None), GENERIC)


def num_layers(model: nn.Module) -> int | None:
    """``config.num_hidden_layers`` of a Hugging Face model (None otherwise)."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None) if config is not None else None
    return n if isinstance(n, int) else None


def layer_stacks(model: nn.Module) -> list[str]:
    """Paths of the ``nn.ModuleList``s that hold a HF model's layers (deleting from them is supported)."""
    n = num_layers(model)
    if n is None:
        return []
    # a list of different module types (T5's [self-attention, FFN] per block) is not a layer stack
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) == n and len({type(x) for x in m}) == 1]


def sync_config(model: nn.Module, removed: list[int], old_len: int) -> None:
    """After deleting layers ``removed`` (indices before deletion) of a stack of ``old_len`` layers,
    keep ``model.config`` and the layers' index attributes consistent."""
    config = model.config
    ad = adapter_for(model)
    keep = [i for i in range(old_len) if i not in set(removed)]
    config.num_hidden_layers = len(keep)
    for key, value in list(vars(config).items()):
        if key in ad.keep_keys or key.startswith("_"):
            continue
        if isinstance(value, (list, tuple)) and (len(value) == old_len or key in ad.per_layer_keys):
            try:
                setattr(config, key, type(value)(value[i] for i in keep))
            except Exception:  # a strict config refuses it (HF validation): a pair, not per-layer values
                pass


def renumber(stack: nn.ModuleList, model: nn.Module) -> None:
    """Set ``layer_idx`` (and the family's other index attributes) of every module of layer j to j."""
    attrs = adapter_for(model).layer_index_attrs
    for j, layer in enumerate(stack):
        for m in layer.modules():
            for a in attrs:
                if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool):
                    setattr(m, a, j)
