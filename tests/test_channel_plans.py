"""Plans that slice channel units: JSON round trip, layer collapse, and refusals."""

import pytest
import torch

import flowprune
from flowprune.errors import PlanError
from flowprune.zoo import ZOO


@pytest.fixture(scope="module")
def llama():
    e = ZOO["llama"]
    model, x = e.build(), e.inputs()
    return model, x, flowprune.trace(model, x)


def test_plan_json_round_trip_and_counts(llama):
    model, x, graph = llama
    plan = graph.plan(units={"model.layers.1.mlp.gate_proj:channels": [3, 1, 3, 60]})
    assert flowprune.Plan.from_json(plan.to_json()) == plan
    (u,) = plan.units
    assert u.units == (1, 3, 60) and u.of == 64 and u.kind == "channels"
    # gate, up (rows) and down (columns) of 3 neurons, 32 wide each
    assert plan.params_removed == 3 * 3 * 32
    small = flowprune.apply(model, plan)
    n = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
    assert n == plan.params_removed
    assert small.model.layers[1].mlp.down_proj.in_features == 61


def test_removing_every_unit_removes_the_branch(llama):
    model, x, graph = llama
    gid = "model.layers.2.mlp.gate_proj:channels"
    plan = graph.plan(units={gid: range(64)})
    assert [r.id for r in plan.removals] == ["model.layers.2.mlp:branch"] and not plan.units
    assert plan.params_removed == graph.candidate("model.layers.2.mlp:branch").params
    # units of the same group inside a removed branch are not sliced twice
    both = graph.plan(
        ["model.layers.3.mlp:branch"], units={"model.layers.3.mlp.gate_proj:channels": [0]}
    )
    assert (
        not both.units
        and both.params_removed == graph.candidate("model.layers.3.mlp:branch").params
    )


def test_refusals(llama):
    model, x, graph = llama
    with pytest.raises(PlanError, match="reaches the model output"):
        graph.plan(units={"lm_head:channels": [0]})
    with pytest.raises(PlanError, match="units 0..63"):
        graph.plan(units={"model.layers.0.mlp.gate_proj:channels": [64]})
    with pytest.raises(PlanError, match="no prunable channel group"):
        graph.plan(units={"model.layers.0.mlp:channels": [0]})
    plan = graph.plan(units={"model.layers.0.mlp.gate_proj:channels": [0]})
    small = flowprune.apply(model, plan)
    with pytest.raises(PlanError):  # the sliced model is not the model the plan was made for
        flowprune.apply(small, plan)
    with torch.no_grad():  # and the caller's model still runs as before
        assert model(**x).logits.shape == small(**x).logits.shape


@pytest.mark.parametrize(
    "name",
    ["resnet_basic", "resnet_bottleneck", "mobilenetv2", "densenet", "vgg_bn", "lstm_classifier"],
)
def test_plan_replays_from_json_on_a_fresh_model(name):
    # the non-HF counterpart of save/load: the plan alone rebuilds the pruned model from the original
    e = ZOO[name]
    model, x = e.build(), e.inputs()
    graph = flowprune.trace(model, x)
    removed = {g.id: list(range(0, g.units, 3)) for g in graph.channel_groups().prunable()}
    plan = graph.plan(units=removed)
    small = flowprune.apply(model, plan)
    again = flowprune.apply(e.build(), flowprune.Plan.from_json(plan.to_json()))
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x), atol=0, rtol=0)
    assert sum(p.numel() for p in again.parameters()) == plan.params_before - plan.params_removed
