"""Compensation of the consumers of removed units: closed forms of the OBS update, its cost, FLAP's
bias compensation, and the plan/apply path."""

import torch
from torch import nn

import flowprune
from flowprune.channels.compensate import (
    DAMPING,
    _weight_2d,
    compensated,
    consumer_stats,
    obs_cost,
)


def _model_and_data(conv=False):
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)
        )
        data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    else:
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
        data = [torch.randn(16, 5) for _ in range(3)]
    return model.double().eval(), [d.double() for d in data]


def _damped(s):
    H = s.H / s.n
    return H + DAMPING * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype)


def test_obs_update_is_the_least_squares_refit_and_its_cost():
    model, data = _model_and_data()
    s = consumer_stats(model, ["2.weight"], data)["2.weight"]
    Q = [1, 4]
    new = compensated(model, {"2.weight": s}, {"2.weight": Q}, "obs")
    W = _weight_2d(model[2], "linear")  # [3, 7 + bias]
    H = _damped(s)
    Hinv = torch.linalg.inv(H)
    # the OBS form: δW = −W_Q ((H⁻¹)_QQ)⁻¹ (H⁻¹)_Q:, then drop Q
    dW = -W[:, Q] @ torch.linalg.solve(Hinv[Q][:, Q], Hinv[Q, :])
    K = [i for i in range(8) if i not in Q]
    obs = (W + dW)[:, K]
    torch.testing.assert_close(new["2.weight"], obs[:, :-1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(new["2.bias"], obs[:, -1], rtol=1e-9, atol=1e-10)
    # its cost: ½ tr(δW H δWᵀ) equals ½ tr(W_Q ((H⁻¹)_QQ)⁻¹ W_Qᵀ)
    cost = 0.5 * torch.trace(dW @ H @ dW.T)
    assert abs(obs_cost(s, W, Q) - float(cost)) < 1e-9 * max(1.0, float(cost))
    # and the refit never does worse than dropping the columns (least squares, damped H)
    drop = W.clone()
    drop[:, Q] = 0
    assert float(cost) <= 0.5 * float(torch.trace((drop - W) @ H @ (drop - W).T))


def test_mean_compensation_keeps_the_consumer_output_mean():
    model, data = _model_and_data()
    s = consumer_stats(model, ["2.weight"], data)["2.weight"]
    new = compensated(model, {"2.weight": s}, {"2.weight": [0, 2, 3]}, "mean")
    x = torch.cat([model[1](model[0](d)) for d in data])
    K = [1, 4, 5, 6]
    before = model[2](x).mean(0)
    after = (x[:, K] @ new["2.weight"].T + new["2.bias"]).mean(0)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-10)


def test_conv_consumer_blocks_of_columns():
    model, data = _model_and_data(conv=True)
    s = consumer_stats(model, ["2.weight"], data)["2.weight"]
    assert s.block == 9 and s.H.shape == (6 * 9 + 1, 6 * 9 + 1)
    new = compensated(model, {"2.weight": s}, {"2.weight": [2, 5]}, "obs")
    assert new["2.weight"].shape == (4, 4, 3, 3)


def test_plan_with_obs_refits_consumers_and_beats_dropping_on_calibration_data():
    model, data = _model_and_data()
    graph = flowprune.trace(model, data[0])
    (g,) = graph.channel_groups().prunable()
    removed = {g.id: [0, 3, 5]}
    plain = flowprune.apply(model, graph.plan(units=removed))
    refit = flowprune.apply(model, graph.plan(units=removed, fill="obs"), data=data)
    x = torch.cat(data)
    with torch.no_grad():
        ref = model(x)
        err_plain = ((plain(x) - ref) ** 2).sum()
        err_refit = ((refit(x) - ref) ** 2).sum()
    assert err_refit <= err_plain
    assert sum(p.numel() for p in refit.parameters()) == sum(p.numel() for p in plain.parameters())
    plan = graph.plan(units=removed, fill="obs")
    assert flowprune.Plan.from_json(plan.to_json()) == plan and plan.consumers == ("2.weight",)


def test_downdates_compose_into_the_joint_refit_and_greedy_starts_at_the_cheapest():
    from flowprune.channels.compensate import downdate, obs_greedy

    model, data = _model_and_data()
    s = consumer_stats(model, ["2.weight"], data)["2.weight"]
    W = _weight_2d(model[2], "linear")
    Hinv = torch.linalg.inv(_damped(s))
    W1, H1 = downdate(W, Hinv, [1])
    W2, _ = downdate(W1, H1, [4, 5])
    joint = compensated(model, {"2.weight": s}, {"2.weight": [1, 4, 5]}, "obs")
    K = [0, 2, 3, 6]
    torch.testing.assert_close(W2[:, K], joint["2.weight"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(W2[:, -1], joint["2.bias"], rtol=1e-8, atol=1e-10)
    assert float(W2[:, [1, 4, 5]].abs().max()) < 1e-10  # the removed columns end at zero
    graph = flowprune.trace(model, data[0])
    (g,) = graph.channel_groups().prunable()
    first = obs_greedy(model, [g], {"2.weight": s}, {g.id: 1})[g.id]
    costs = [obs_cost(s, W, [u]) for u in range(7)]
    assert first == [min(range(7), key=costs.__getitem__)]
