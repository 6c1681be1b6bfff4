"""Every zoo architecture through one shared tester: trace, candidate counts, the gates' self-check,
rewritten == gated for every candidate, exact parameter savings, and the caller's model untouched."""

import warnings
from collections import Counter

import pytest
import torch

import flowprune
from flowprune._tree import tensor_leaves
from flowprune.graph.trace import call_model
from flowprune.zoo import ZOO

# name -> (residual-branch candidates, layer candidates), counted by hand from the architecture
CASES = {
    "mlp_skip": (3, 3),  # 3 residual blocks in a ModuleList
    "resnet_basic": (3, 4),  # 4 blocks, the stride-2 one has a conv shortcut; + stage 1 (8->8)
    "resnet_bottleneck": (2, 2),  # 4 blocks, 2 with a projection shortcut
    "vgg_bn": (0, 2),  # the two same-width ConvBNReLU layers
    "densenet": (6, 0),  # 2 dense blocks x 3 layers: each layer's output is a concat input
    "mobilenetv2": (3, 3),  # 3 inverted residuals with a skip
    "lstm_classifier": (2, 0),  # x + lstm(x)[0], twice; the LSTMs are branches, not layers
    "vit": (6, 3),  # 3 pre-norm blocks: attn + mlp branches
    "llama": (8, 4),  # L = 4: 2L branches, L layers
    "mistral": (4, 2),
    "qwen2": (4, 2),
    "qwen3": (4, 2),
    "gemma": (4, 2),
    "gemma2": (4, 2),  # branches end at the post-norms (sandwich norm)
    "phi3": (4, 2),
    "gpt2": (4, 2),
    "opt": (4, 2),
    "gpt_neox": (4, 2),
    "falcon": (4, 2),  # parallel attn + mlp: x + (attn + mlp) flattened into two branches
    "bert": (4, 4),  # post-LN: per layer 2 branches, the layer and its attention sublayer
    "roberta": (4, 4),
    "distilbert": (4, 2),
    "hf_resnet": (1, 3),  # stage 0, its block, and the inner conv layer of the stride-2 block
    "hf_convnext": (3, 4),
    "hf_vit": (4, 2),
}


def _out(model, x):
    with torch.no_grad():
        return [t for t in tensor_leaves(call_model(model, x)) if t.is_floating_point()]


def _other_size(x):
    """Inputs of another batch size (and sequence length): stubs must follow the input, not the trace."""
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x[:1]])
    if isinstance(x, dict):
        return {
            k: torch.cat([v, v[:1]])[:, :5]
            if isinstance(v, torch.Tensor) and v.dim() == 2 and k != "pixel_values"
            else (torch.cat([v, v[:1]]) if isinstance(v, torch.Tensor) else v)
            for k, v in x.items()
        }
    return x


def test_zoo_is_covered():
    assert set(CASES) == set(ZOO) and len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_architecture(name):
    entry = ZOO[name]
    model, x = entry.build(), entry.inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())

    graph = flowprune.trace(model, x)
    kinds = Counter(c.kind for c in graph.candidates())
    assert (kinds["branch"], kinds["layer"]) == CASES[name]
    for v, d in graph.nx.nodes(data=True):
        assert {"path", "kind", "params", "flops", "in_shape", "out_shape"} <= set(d), v

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped candidate would warn
        gates = flowprune.Gates(graph).__enter__()
    x2 = _other_size(x)
    try:
        assert gates.failed == {}
        for c in graph.candidates():
            with gates.removed([c.id]):
                gated, gated2 = _out(model, x), _out(model, x2)
            small = flowprune.apply(
                model, graph.plan([c.id])
            )  # made inside Gates: must not stay gated
            for ref, got in ((gated, _out(small, x)), (gated2, _out(small, x2))):
                assert len(ref) == len(got)
                for a, b in zip(ref, got):
                    assert torch.allclose(a, b, atol=1e-5, rtol=0), c.id
            assert n_params - sum(p.numel() for p in small.parameters()) == c.params > 0, c.id
    finally:
        gates.__exit__(None, None, None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
