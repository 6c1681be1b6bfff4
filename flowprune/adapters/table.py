"""One ``Adapter`` per Hugging Face ``config.model_type``: where a family keeps its widths, head counts,
layer count and layer list, and how it uses the KV cache.

Every entry is checked against a model built from a tiny config (``tests/test_adapters.py``).  A family
not in the table gets an adapter derived from its config (:func:`derive`), so it still works.

>>> adapter_for(model).layer_count(model.config)   # Llama: config.num_hidden_layers
4
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

_LLM_NORM = "RMSNorm"  # the decoder families below name theirs <Family>RMSNorm


# Attributes attention modules keep their head counts and total head width in (any family): after
# removing heads they are scaled by kept/total heads.  ``head_dim`` is not here: heads keep their size.
HEAD_ATTRS: tuple[str, ...] = (
    "num_heads", "num_attention_heads", "num_key_value_heads", "num_kv_heads", "n_head", "n_heads",
    "n_kv_heads", "n_kv_head", "all_head_size", "inner_dim", "split_size", "embed_dim", "kv_heads",
    "num_key_value_heads_per_layer", "heads",
)  # fmt: skip


@dataclass(frozen=True)
class Adapter:
    """What flowprune knows of one model family; each ``str`` field is a config key (None: absent).

    >>> ADAPTERS["gpt2"].hidden, ADAPTERS["gpt2"].layers, ADAPTERS["gpt2"].layer_paths
    ('n_embd', 'n_layer', ('h',))
    """

    model_type: str = ""
    hidden: str | None = "hidden_size"  # model width (a per-stage list for CNNs)
    intermediate: str | None = "intermediate_size"  # MLP width
    heads: str | None = "num_attention_heads"
    kv_heads: str | None = None  # None: as many KV heads as query heads
    multi_query: str | None = None  # a flag meaning one KV head (Falcon)
    head_dim: str | None = None  # None: hidden // heads
    layers: str | None = "num_hidden_layers"  # layer count
    # the layer list, relative to the base model (``model.base_model``); alternatives in the order tried
    # (transformers versions differ); "*" stands for every entry of a list of stages
    layer_paths: tuple[str, ...] = ()
    stage_depths: str | None = None  # with "*": the config list of each stage's layer count
    per_layer: tuple[str, ...] = ()  # config lists with one entry per layer, cut on deletion
    keep: tuple[str, ...] = ("architectures", "id2label", "label2id")  # lists never cut
    use_cache: bool = False  # forward takes ``use_cache`` (off while scoring)
    # attention modules carry ``layer_idx`` (the KV cache's slot); a removed one still fills its slot
    layer_idx: bool = False
    layer_index_attrs: tuple[str, ...] = ("layer_idx", "layer_id", "layer_index")
    norms: tuple[str, ...] = ()  # normalisation module class names
    known: bool = True  # False: derived from an unknown family's config

    def value(self, config: Any, key: str | None) -> Any:
        """``config.<key>`` (None when the key is None or absent)."""
        return getattr(config, key, None) if key else None

    def width(self, config: Any) -> Any:
        """Model width: an int, or a per-stage list for CNN families."""
        return self.value(config, self.hidden)

    def num_heads(self, config: Any) -> int | None:
        return self.value(config, self.heads)

    def num_kv_heads(self, config: Any) -> int | None:
        """KV heads: the KV key, 1 for Falcon-style multi-query, else the query heads."""
        if (
            self.multi_query
            and self.value(config, self.multi_query)
            and not getattr(config, "new_decoder_architecture", False)
        ):
            return 1
        kv = self.value(config, self.kv_heads)
        return kv if isinstance(kv, int) else self.num_heads(config)

    def dim_per_head(self, config: Any) -> int | None:
        d = self.value(config, self.head_dim)
        if isinstance(d, int):
            return d
        w, h = self.width(config), self.num_heads(config)
        return w // h if isinstance(w, int) and isinstance(h, int) and h else None

    def layer_count(self, config: Any) -> int | None:
        """Layers of the single layer list (None for per-stage families and non-integers)."""
        n = self.value(config, self.layers)
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    def stage_counts(self, config: Any) -> list[int] | None:
        """Layers of each list: ``[layer_count]``, or the per-stage depths."""
        if self.stage_depths:
            d = self.value(config, self.stage_depths)
            return [int(x) for x in d] if isinstance(d, (list, tuple)) else None
        n = self.layer_count(config)
        return None if n is None else [n]


def _decoder(model_type: str, **kw: Any) -> Adapter:
    """A Llama-style decoder: ``model.layers``, GQA, KV cache indexed by ``layer_idx``."""
    fam = {"qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma2", "phi3": "Phi3"}.get(
        model_type, model_type.capitalize()
    )
    base = dict(
        kv_heads="num_key_value_heads",
        head_dim="head_dim",
        layer_paths=("layers",),
        use_cache=True,
        layer_idx=True,
        norms=(fam + _LLM_NORM,),
    )
    return Adapter(model_type, **{**base, **kw})


def _encoder(model_type: str, **kw: Any) -> Adapter:
    """A BERT-style encoder: ``encoder.layer``, post-LN ``LayerNorm``."""
    base = dict(layer_paths=("encoder.layer",), norms=("LayerNorm",))
    return Adapter(model_type, **{**base, **kw})


_TABLE = (
    _decoder("llama"),
    _decoder("mistral"),
    _decoder(
        "qwen2", head_dim=None, per_layer=("layer_types",)
    ),  # no head_dim key: hidden // heads
    _decoder("qwen3", per_layer=("layer_types",)),
    _decoder("gemma"),
    _decoder("gemma2", per_layer=("layer_types",)),
    _decoder("phi3", head_dim=None),
    Adapter(
        "gpt2",
        hidden="n_embd",
        intermediate="n_inner",
        heads="n_head",
        layers="n_layer",
        layer_paths=("h",),
        use_cache=True,
        layer_idx=True,
        norms=("LayerNorm",),
    ),
    Adapter(
        "opt",
        intermediate="ffn_dim",
        layer_paths=("decoder.layers",),
        use_cache=True,
        layer_idx=True,
        norms=("LayerNorm",),
    ),
    Adapter(
        "gpt_neox", layer_paths=("layers",), use_cache=True, layer_idx=True, norms=("LayerNorm",)
    ),
    Adapter(
        "falcon",
        intermediate="ffn_hidden_size",
        kv_heads="num_kv_heads",
        multi_query="multi_query",
        head_dim="head_dim",
        layer_paths=("h",),
        use_cache=True,
        layer_idx=True,
        norms=("LayerNorm",),
    ),
    # BERT/RoBERTa attention carries layer_idx (a cache when used as a decoder) and forward takes use_cache
    _encoder("bert", use_cache=True, layer_idx=True),
    _encoder("roberta", use_cache=True, layer_idx=True),
    _encoder(
        "distilbert",
        hidden="dim",
        intermediate="hidden_dim",
        heads="n_heads",
        layers="n_layers",
        layer_paths=("transformer.layer",),
    ),
    _encoder(
        "vit", layer_paths=("layers", "encoder.layer")
    ),  # transformers 5 dropped ViT's `encoder`
    # CNNs: widths per stage; ConvNeXt's layers sit in one ModuleList per stage (config.depths)
    Adapter(
        "convnext",
        hidden="hidden_sizes",
        intermediate=None,
        heads=None,
        layers=None,
        layer_paths=("encoder.stages.*.layers",),
        stage_depths="depths",
        norms=("ConvNextLayerNorm", "LayerNorm"),
    ),
    # ResNet's per-stage layers are an nn.Sequential (not deletable): no layer list
    Adapter(
        "resnet",
        hidden="hidden_sizes",
        intermediate=None,
        heads=None,
        layers=None,
        stage_depths="depths",
        norms=("BatchNorm2d",),
    ),
)

ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in _TABLE}

# an unknown family's keys are the first of these its config has (Hugging Face's common spellings)
_ALTERNATIVES = {
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate": (
        "intermediate_size",
        "n_inner",
        "ffn_dim",
        "d_ff",
        "hidden_dim",
        "ffn_hidden_size",
    ),
    "heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "head_dim": ("head_dim",),
    "layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
}

GENERIC = Adapter(known=False)


def derive(config: Any) -> Adapter:
    """The adapter of an unknown family: for each field the first common key its config has (the layer
    list is then found by :func:`~flowprune.adapters.layers.layer_stacks`' generic rule).

    >>> derive(T5Config()).layers
    'num_layers'
    """
    if config is None:
        return GENERIC
    # a key the config holds itself before an alias of Hugging Face's attribute_map (T5: d_model)
    own = [k for k, v in getattr(config, "__dict__", {}).items() if v is not None]
    found = {
        field: next((k for k in keys if k in own), None)
        or next((k for k in keys if getattr(config, k, None) is not None), None)
        for field, keys in _ALTERNATIVES.items()
    }
    # today's rule counts layers with num_hidden_layers (HF maps n_layer etc. onto it) when it exists
    if getattr(config, "num_hidden_layers", None) is not None:
        found["layers"] = "num_hidden_layers"
    return replace(GENERIC, model_type=str(getattr(config, "model_type", "") or ""), **found)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family: the table's entry for ``config.model_type``, else one derived
    from the config (:data:`GENERIC` for a model without a config).

    >>> adapter_for(LlamaForCausalLM(cfg)) is ADAPTERS["llama"]
    True
    """
    config = getattr(model, "config", None)
    known = ADAPTERS.get(getattr(config, "model_type", None) or "")
    return known if known is not None else derive(config)
