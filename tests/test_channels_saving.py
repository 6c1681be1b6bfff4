"""Hugging Face round trips after slicing heads and MLP neurons: uniform widths reload with plain
``from_pretrained`` (config synced), per-layer widths through ``load_pretrained`` (slices replayed);
both reproduce the pruned logits and ``generate`` with the KV cache."""

import pytest
import torch
import transformers

import flowprune
from flowprune.zoo import ZOO

DECODERS = ["llama", "qwen3", "gemma", "mistral", "qwen2", "phi3"]


def _logits(model, x):
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _prune(name, uniform):
    e = ZOO[name]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    groups = graph.channel_groups().prunable()
    removed = {}
    for i, g in enumerate(groups):
        k = max(1, g.units // 2) if uniform or g.kind == "heads" else max(1, g.units // (2 + i % 3))
        if g.kind == "heads" and not uniform and i % 2:
            k = 0  # some layers keep every head
        removed[g.id] = list(range(g.units - k, g.units))
    small = flowprune.apply(model, graph.plan(units=removed))
    return model, small, x, removed


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("uniform", [True, False])
def test_decoder_round_trip(tmp_path, name, uniform):
    model, small, x, removed = _prune(name, uniform)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    flowprune.save_pretrained(small, tmp_path / "m")
    back = flowprune.load_pretrained(tmp_path / "m")
    ref = _logits(small, x)
    torch.testing.assert_close(_logits(back, x), ref, atol=1e-5, rtol=1e-5)
    ids = x["input_ids"][:1, :5]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(small.generate(ids, **kw), back.generate(ids, **kw))
    # generate with the cache == greedy decoding without it
    out = small.generate(ids, **kw)
    with torch.no_grad():
        nocache = small(out[:, :-1], use_cache=False).logits[:, ids.shape[1] - 1 :].argmax(-1)
    assert torch.equal(nocache, out[:, ids.shape[1] :])
    widths = {len(p) for gid, p in removed.items() if "mlp" in gid}
    if uniform:
        plain = type(small).from_pretrained(tmp_path / "m")
        torch.testing.assert_close(_logits(plain, x), ref, atol=1e-5, rtol=1e-5)
        assert plain.config.intermediate_size == 64 - widths.pop()
        assert plain.config.num_key_value_heads == 1 and plain.config.num_attention_heads == 2
    else:  # the config cannot say per-layer widths: plain from_pretrained refuses the shapes
        assert len(widths) > 1
        with pytest.raises((RuntimeError, ValueError)):
            type(small).from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("name", ["bert", "hf_vit", "gpt2", "distilbert"])
def test_encoder_and_gpt2_heads_round_trip(tmp_path, name):
    e = ZOO[name]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    removed = {
        g.id: [0] if g.kind == "heads" else [1, 2, 3] for g in graph.channel_groups().prunable()
    }
    assert any(g.kind == "heads" for g in graph.channel_groups().prunable())
    small = flowprune.apply(model, graph.plan(units=removed))
    flowprune.save_pretrained(small, tmp_path / "m")
    back = flowprune.load_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(back, x), _logits(small, x), atol=1e-5, rtol=1e-5)


def test_saved_plan_replays_on_a_fresh_model():
    model, small, x, removed = _prune("llama", uniform=False)
    plan = small.flowprune_plans[-1]
    again = flowprune.apply(ZOO["llama"].build(), flowprune.Plan.from_json(plan.to_json()))
    torch.testing.assert_close(_logits(again, x), _logits(small, x), atol=0, rtol=0)
    assert isinstance(again, transformers.PreTrainedModel)
