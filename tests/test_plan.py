"""Plans: JSON round trip, atomic files, rewriting, and the errors of a plan that does not fit."""

import dataclasses
import json
import os

import pytest
import torch
from support import Stack

import flowprune
from flowprune.plan import PLAN_SCHEMA, Replacement

X = torch.randn(3, 4)


def _graph():
    torch.manual_seed(0)
    m = Stack()
    return m, flowprune.trace(m, X)


def test_json_round_trip_and_atomic_write(tmp_path):
    m, g = _graph()
    plan = g.plan(["blocks.0.mlp:branch", "blocks.2:layer"])
    assert flowprune.Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "sub" / "plan.json"
    plan.to_json(path)
    assert flowprune.Plan.from_json(path) == plan
    assert os.listdir(path.parent) == ["plan.json"]  # no temporary file left behind
    d = json.loads(path.read_text())
    assert d["version"] == flowprune.__version__ and d["schema"] == PLAN_SCHEMA == 2
    assert [r["path"] for r in d["removals"]] == ["blocks.0.mlp", "blocks.2"]


def test_apply_removes_exactly_the_planned_parameters_and_matches_the_gates():
    m, g = _graph()
    ids = ["blocks.0.mlp:branch", "blocks.2:layer"]
    plan = g.plan(ids)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with flowprune.Gates(g) as gates, gates.removed(ids), torch.no_grad():
        ref = m(X)
    small = flowprune.apply(m, plan)
    with torch.no_grad():
        assert torch.allclose(small(X), ref, atol=1e-6)

    def n(mod):
        return sum(p.numel() for p in mod.parameters())

    assert n(m) - n(small) == plan.params_removed == sum(r.params for r in plan.removals)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # argument untouched
    assert isinstance(small.blocks[2], flowprune.rewrite.Removed) and isinstance(
        m.blocks[2], torch.nn.Module
    )
    # in place variant
    same = flowprune.apply_(m, plan)
    assert same is m and n(m) == n(small)


def test_plan_for_another_model_is_refused():
    m, g = _graph()
    plan = g.plan(["blocks.1:layer"])
    other = Stack(n=2)
    with pytest.raises(
        flowprune.PlanError, match=r"made for a Stack with .* parameters.*Trace this model"
    ):
        flowprune.apply(other, plan)


def test_plan_naming_a_missing_module_is_refused():
    m, g = _graph()
    plan = g.plan(["blocks.1:layer"])
    bad = dataclasses.replace(
        plan, replacements=(Replacement("blocks.7", "identity", {"t": "input"}),)
    )
    with pytest.raises(flowprune.PlanError, match=r"'blocks.7'.*does not have.*close: \['blocks"):
        flowprune.apply(m, bad)


def test_bad_json_is_a_plan_error():
    with pytest.raises(flowprune.PlanError, match="not a flowprune plan"):
        flowprune.Plan.from_json('{"removals": []}')


def test_unknown_candidate_id_suggests_close_ones():
    _, g = _graph()
    with pytest.raises(KeyError, match=r"blocks.1:layer"):
        g.plan(["blocks.1:layr"])


def test_a_plan_is_applied_once():
    m, g = _graph()
    plan = g.plan(["blocks.1:layer"])
    small = flowprune.apply(m, plan)
    with pytest.raises(flowprune.PlanError, match="already applied"):
        flowprune.apply_(small, plan, check=False)
