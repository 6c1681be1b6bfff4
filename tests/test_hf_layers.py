"""Deleting layers of Hugging Face models: config in sync, save_pretrained -> from_pretrained round trip."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import flowprune
from flowprune._tree import tensor_leaves
from flowprune.graph.trace import call_model
from flowprune.zoo import ZOO

HF_STACKS = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
    "opt",
    "gpt_neox",
    "falcon",
    "bert",
    "roberta",
    "distilbert",
    "hf_vit",
]


def _gated(graph, ids):
    with flowprune.Gates(graph) as gates, gates.removed(ids), torch.no_grad():
        return tensor_leaves(call_model(graph.model, graph.example_inputs))[0]


def test_llama_acceptance(tmp_path):
    e = ZOO["llama"]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    kinds = [c.kind for c in graph.candidates()]
    assert kinds.count("branch") == 8 and kinds.count("layer") == 4
    ids = ["model.layers.1:layer", "model.layers.2:layer"]
    ref = _gated(graph, ids)
    small = flowprune.apply(model, graph.plan(ids))
    assert len(small.model.layers) == 2 and small.config.num_hidden_layers == 2
    assert [lay.self_attn.layer_idx for lay in small.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 4  # the original's config is not shared with the copy
    small.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**x).logits, ref, atol=1e-5)


@pytest.mark.parametrize("name", HF_STACKS)
def test_deleted_layer_round_trips(name, tmp_path):
    e = ZOO[name]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    layers = [c for c in graph.candidates("layer") if c.deletable]
    assert layers, "the layer stack was not recognised"
    old = model.config.num_hidden_layers
    target = layers[0]
    ref = _gated(graph, [target.id])
    small = flowprune.apply(model, graph.plan([target.id]))
    assert small.config.num_hidden_layers == old - 1
    types = getattr(small.config, "layer_types", None)
    if types is not None:
        assert list(types) == list(model.config.layer_types)[1:]
    small.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in small.parameters()
    )
    with torch.no_grad():
        out = tensor_leaves(call_model(reloaded, x))[0]
    assert torch.allclose(out, ref, atol=1e-5)
