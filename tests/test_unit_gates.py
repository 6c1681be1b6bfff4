"""Unit gates drive the score engine unchanged: per-unit losses, gate gradients and Hessians are the
closed-form ones of a model that is quadratic in its unit gates."""

import copy

import torch
from torch import nn

import flowprune
from flowprune.channels import UnitGates
from flowprune.score.engine import Engine
from flowprune.score.taylor import gradient_and_hessian


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    x = torch.randn(16, 4, dtype=torch.float64)
    t = torch.randn(16, 2, dtype=torch.float64)
    graph = flowprune.trace(model, x)
    (group,) = graph.channel_groups().prunable()
    return model, x, t, graph, group


def _squared_error(t):
    def loss(out, batch, ref=None):  # per sample
        return ((out - t) ** 2).sum(-1)

    return loss


def test_engine_on_unit_gates_gives_closed_form_gradient_hessian_and_losses():
    model, x, t, graph, group = _setup()
    assert group.id == "0:channels" and group.units == 5
    gates = UnitGates(model, [group])
    with Engine(graph, [x], _squared_error(t), gates=gates, progress=False) as eng:
        g, H = gradient_and_hessian(eng, hessian="full")
        base = eng.loss()
        dl = {c.id: eng.loss([c.id]) - base for c in gates.candidates}
    # y = W2 (α ⊙ h) + b2 with h = relu(W1 x + b1): L(α) is quadratic in α
    with torch.no_grad():
        h = model[1](model[0](x))  # [16, 5]
        y = model(x)
        W2 = model[2].weight  # [2, 5]
        cols = h[:, None, :] * W2[None, :, :]  # [16, 2, 5]: unit j's contribution W2[:, j] h_j
        g_ref = (2 * (y - t)[:, :, None] * cols).sum(1).mean(0)
        H_ref = 2 * torch.einsum("nkj,nki->ji", cols, cols) / len(x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(H, H_ref, rtol=1e-9, atol=1e-12)
    for j in range(5):  # quadratic: the second-order expansion is exact
        taylor = -g[j] + 0.5 * H[j, j]
        assert abs(dl[f"0:channels#{j}"] - float(taylor)) < 1e-9
    # and removing the unit for real gives the same loss change
    plan = graph.plan(units={"0:channels": [3]})
    small = flowprune.apply(model, plan)
    with torch.no_grad():
        sliced = float(_squared_error(t)(small(x), x).mean()) - base
    assert abs(sliced - dl["0:channels#3"]) < 1e-9


def test_unit_gates_leave_the_model_as_it_was():
    model, x, t, graph, group = _setup()
    before = copy.deepcopy(model.state_dict())
    with UnitGates(model, [group]) as gates:
        gates.set({group.id: [0, 2]}, 0.0)
        model(x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_unit_scores_exact_loss_equals_slicing_each_unit():
    from torch.nn import functional as F

    from flowprune.score.units import unit_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    graph = flowprune.trace(model, x)
    s = unit_scores(graph, [(x, y)], ["loss", "kl", "spvr", "flow", "obs"], loss="ce")
    (gid,) = s["loss"]
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
        for u in range(6):
            small = flowprune.apply(model, graph.plan(units={gid: [u]}))
            # (the engine evaluates losses in float32)
            assert abs(F.cross_entropy(small(x), y).item() - base - float(s["loss"][gid][u])) < 1e-5
    assert (s["kl"][gid] >= 0).all() and (s["spvr"][gid] >= 0).all() and (s["obs"][gid] >= 0).all()
    # energy shares of one consumer's inputs: each unit's own share, in [0, 1]
    assert ((s["flow"][gid] >= 0) & (s["flow"][gid] <= 1)).all()
