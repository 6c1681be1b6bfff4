"""The family table (flowprune.adapters) checked against models built from tiny configs, and the shared
rules (scoring kwargs, KV-cache slot, stubs, norms) that the rest of flowprune reads from it."""

import inspect
from fnmatch import fnmatchcase

import pytest
import torch
from torch import nn

import flowprune
from flowprune.adapters import (
    ADAPTERS,
    adapter_for,
    derive,
    fill_cache_slot,
    is_norm,
    is_stub,
    layer_stacks,
    num_layers,
    scoring_kwargs,
)
from flowprune.zoo import ZOO
from flowprune.zoo.hf import HF


def _zoo_name(model_type: str) -> str:
    return {"vit": "hf_vit", "resnet": "hf_resnet", "convnext": "hf_convnext"}.get(
        model_type, model_type
    )


@pytest.fixture(scope="module")
def built():
    return {t: HF[_zoo_name(t)].build() for t in ADAPTERS}


def test_every_family_has_a_zoo_builder():
    assert {_zoo_name(t) for t in ADAPTERS} == set(HF)


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_entry_matches_a_built_model(model_type, built):
    model = built[model_type]
    config, ad = model.config, ADAPTERS[model_type]
    assert config.model_type == model_type and adapter_for(model) is ad
    # every named config key exists and holds what the field says
    for field in (
        "hidden",
        "intermediate",
        "heads",
        "kv_heads",
        "multi_query",
        "head_dim",
        "layers",
        "stage_depths",
        *(["per_layer"] if ad.per_layer else []),
    ):
        keys = getattr(ad, field)
        for key in keys if isinstance(keys, tuple) else [keys]:
            if key is not None:
                assert key in config.to_dict() or hasattr(config, key), (field, key)
    width = ad.width(config)
    assert isinstance(width, int) or (
        isinstance(width, (list, tuple)) and all(isinstance(w, int) for w in width)
    )
    if ad.heads:
        heads, kv, hd = ad.num_heads(config), ad.num_kv_heads(config), ad.dim_per_head(config)
        assert heads == 4 and heads % kv == 0
        attn = [
            m
            for m in model.modules()
            if type(m).__name__.endswith(("Attention", "MultiHeadSelfAttention"))
        ]
        assert attn
        # the attention modules agree on KV heads / head dim wherever they expose them
        for m in attn:
            for a, want in (("num_key_value_heads", kv), ("num_kv_heads", kv), ("head_dim", hd)):
                if isinstance(getattr(m, a, None), int):
                    assert getattr(m, a) == want, (type(m).__name__, a)
    if ad.intermediate:
        assert isinstance(ad.value(config, ad.intermediate), int)
    for key in ad.per_layer:
        assert len(getattr(config, key)) == ad.layer_count(config)
    # the layer list resolves to ModuleLists holding the config's layer counts
    stacks = layer_stacks(model)
    modules = dict(model.named_modules())
    if ad.layer_paths:
        counts = ad.stage_counts(config)
        assert [len(modules[p]) for p in stacks] == counts
        assert all(isinstance(modules[p], nn.ModuleList) for p in stacks)
        assert all(
            any(fnmatchcase(p, path) or fnmatchcase(p, "*." + path) for path in ad.layer_paths)
            for p in stacks
        )
    else:
        assert stacks == []
    # cache conventions
    assert ad.use_cache == ("use_cache" in inspect.signature(model.forward).parameters)
    assert scoring_kwargs(model) == ({"use_cache": False} if ad.use_cache else {})
    slots = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert bool(slots) == ad.layer_idx
    # normalisation classes: exactly the family's list (plus torch's own)
    named = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert named == set(ad.norms)
    assert all(is_norm(m, model) for m in model.modules() if type(m).__name__ in ad.norms)


def test_stacks_as_the_generic_rule_found_them(built):
    """The table agrees with the config-derived rule wherever that one found the right list."""
    for t, model in built.items():
        if t in ("convnext", "resnet"):
            continue  # the generic rule cannot see per-stage lists
        generic = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) == model.config.num_hidden_layers
        ]
        assert layer_stacks(model) == generic, t


def test_unknown_family_is_derived_from_its_config():
    from transformers import T5Config

    ad = derive(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2))
    assert not ad.known and (ad.hidden, ad.intermediate, ad.heads) == (
        "d_model",
        "d_ff",
        "num_heads",
    )
    assert ad.layer_count(T5Config(num_layers=3)) == 3
    assert adapter_for(nn.Linear(2, 2)).known is False and num_layers(nn.Linear(2, 2)) is None


def test_unknown_family_falls_back_to_the_generic_stack_rule():
    model = HF["llama"].build()
    model.config.model_type = "my_llama"  # not in the table
    assert not adapter_for(model).known
    assert layer_stacks(model) == ["model.layers"] and num_layers(model) == 4


def test_scoring_kwargs_follow_the_signature():
    class NoCache(nn.Module):
        def forward(self, input_ids):
            return input_ids.float()

    assert scoring_kwargs(NoCache()) == {}
    x = {"input_ids": torch.randint(0, 128, (1, 4))}
    assert flowprune.score.perplexity(HF["gpt2"].build(), [x]) > 1


def test_removed_attention_fills_its_cache_slot():
    from transformers import DynamicCache

    cache = DynamicCache()
    fill_cache_slot({"past_key_values": cache}, 0, torch.ones(2, 5, 8))
    fill_cache_slot(
        {"past_key_values": cache}, None, torch.ones(2, 5, 8)
    )  # not an attention: no entry
    fill_cache_slot({}, 1, torch.ones(2, 5, 8))  # no cache
    assert (
        len(cache.layers) == 1
    )  # one (empty) entry: the next layer's slot is 1, as generate expects


def test_stubs_and_norms():
    e = ZOO["llama"]
    model = e.build()
    graph = flowprune.trace(model, e.inputs())
    small = flowprune.apply(model, graph.plan(["model.layers.0.mlp:branch"]))
    assert is_stub(small.model.layers[0].mlp) and not is_stub(small.model.layers[0].self_attn)
    assert is_norm(small.model.norm, small) and not is_norm(small.lm_head, small)
    assert is_norm(nn.BatchNorm2d(3)) and is_norm(
        type("MyRMSNorm", (nn.Module,), {})()
    )  # unknown: by name


def test_convnext_layer_deletion_keeps_depths(tmp_path):
    """Per-stage lists: deleting a ConvNeXt layer cuts its stage's depth, so from_pretrained rebuilds it."""
    e = ZOO["hf_convnext"]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    ids = [c.id for c in graph.candidates("layer") if c.deletable]
    assert ids == [
        "encoder.stages.0.layers.0:layer",
        "encoder.stages.0.layers.1:layer",
        "encoder.stages.1.layers.0:layer",
    ]
    small = flowprune.apply(model, graph.plan([ids[1]]))
    assert list(small.config.depths) == [1, 1] and list(model.config.depths) == [2, 1]
    small.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(
            reloaded(**x).last_hidden_state, small(**x).last_hidden_state, atol=1e-5
        )
