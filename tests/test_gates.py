"""Gates: closed-form gated outputs, the self-check, and no trace left on the model."""

import pytest
import torch
from support import Biased, Parallel, Residual, Stack

import flowprune

X = torch.randn(3, 4)


def test_branch_gate_scales_the_branch():
    m = Residual()
    g = flowprune.trace(m, X)
    fc = torch.nn.functional.linear(X, m.fc.weight, m.fc.bias).detach()  # computed outside the gate
    with flowprune.Gates(g) as gates, torch.no_grad():
        gates.set({"fc:branch": 0.25})
        assert torch.allclose(m(X), X + 0.25 * fc)
        with gates.removed(["fc:branch"]):
            assert torch.equal(m(X), X)
        assert torch.allclose(m(X), X + 0.25 * fc)  # restored after the block
    with torch.no_grad():
        assert torch.allclose(m(X), X + fc)  # hooks gone


def test_layer_gate_interpolates_to_identity():
    m = Stack()
    g = flowprune.trace(m, X)
    blk = m.blocks[1]
    with flowprune.Gates(g) as gates, torch.no_grad():
        seen = {}
        h = blk.register_forward_hook(lambda mod, a, out: seen.update(x=a[0], y=out))
        gates.set({"blocks.1:layer": 0.3})
        m(X)
        h.remove()
        f = blk.mlp(blk.norm(seen["x"])) + seen["x"]  # the ungated block output
        assert torch.allclose(seen["y"], seen["x"] + 0.3 * (f - seen["x"]), atol=1e-6)


def test_alpha_is_differentiable():
    m = Parallel()
    g = flowprune.trace(m, X)
    with flowprune.Gates(g) as gates:
        gates.alpha = torch.ones(len(gates.candidates), requires_grad=True)
        m(X).sum().backward()
        idx = gates.index
        with torch.no_grad():
            h = m.norm(X)
            assert torch.allclose(gates.alpha.grad[idx["f:branch"]], m.f(h).sum())
            assert torch.allclose(gates.alpha.grad[idx["g:branch"]], m.g(h).sum())


def test_self_check_drops_a_branch_that_does_not_vanish():
    m = Biased()
    g = flowprune.trace(m, X)
    assert [c.id for c in g.candidates()] == ["fc:branch"]
    with pytest.warns(UserWarning, match=r"fc:branch.*not linear"):
        with flowprune.Gates(g) as gates:
            assert gates.candidates == [] and "fc:branch" in gates.failed
            with pytest.raises(KeyError, match="fc:branch"):
                gates.set({"fc:branch": 0.0})


def test_every_candidate_passes_the_check_on_good_models():
    for m in (Residual(), Parallel(), Stack()):
        g = flowprune.trace(m, X)
        with flowprune.Gates(g) as gates:
            assert gates.failed == {} and len(gates.candidates) == len(g.candidates())
