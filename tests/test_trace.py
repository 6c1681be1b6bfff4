"""Graphs, FLOPs and candidates of models known by hand."""

import torch
from support import Concat, InplaceResidual, Parallel, PreNorm, Residual, Reuse, Stack, TwoHeads
from torch import nn

import flowprune

X = torch.randn(3, 4)


def test_residual_graph_is_exact():
    g = flowprune.trace(Residual(), X)
    assert set(g.nx.nodes) == {"input:0", "fc", "::add0", "output"}
    assert set(g.nx.edges) == {
        ("input:0", "fc"),
        ("input:0", "::add0"),
        ("fc", "::add0"),
        ("::add0", "output"),
    }
    fc = g.nx.nodes["fc"]
    assert (fc["kind"], fc["params"], fc["in_shape"], fc["out_shape"]) == (
        "Linear",
        20,
        (3, 4),
        (3, 4),
    )
    assert fc["flops"] == 2 * 3 * 4 * 4
    assert g.nx.nodes["::add0"]["kind"] == "add"
    [c] = g.candidates()
    assert (c.id, c.kind, c.path, c.params, c.flops) == ("fc:branch", "branch", "fc", 20, 96)


def test_inplace_add_and_aliasing_ops_keep_the_skip():
    g = flowprune.trace(InplaceResidual(), X)
    # the skip operand still comes from the input, not from fc (the in-place add mutated fc's output)
    assert set(g.nx.predecessors("::add0")) == {"input:0", "fc"}
    assert [c.id for c in g.candidates()] == ["fc:branch"]


def test_sum_of_two_heads_is_not_a_residual_branch():
    g = flowprune.trace(TwoHeads(), X)
    assert "::add0" in g.nx and g.candidates() == []


def test_nested_adds_are_flattened_into_parallel_branches():
    g = flowprune.trace(Parallel(), X)
    assert sorted(c.id for c in g.candidates()) == ["f:branch", "g:branch"]
    # the norm feeds both branches: removing one keeps it, removing both kills it
    assert g.candidate("f:branch").params == 20
    assert g.effect(["f:branch", "g:branch"]).params == 20 + 20 + 8


def test_dead_modules_are_counted_and_tied_weights_are_not():
    g = flowprune.trace(Stack(), X)
    kinds = [c.kind for c in g.candidates()]
    assert kinds.count("branch") == 3 and kinds.count("layer") == 3
    block = sum(p.numel() for p in PreNorm().parameters())
    assert g.candidate("blocks.0.mlp:branch").params == block  # the mlp and its now-dead norm
    assert g.candidate("blocks.1:layer").params == block
    assert g.total_params == sum(p.numel() for p in Stack().parameters())  # the tied weight once


def test_module_called_twice_and_identity_modules():
    g = flowprune.trace(Reuse(), X)
    assert {"relu", "relu#1"} <= set(g.nx.nodes)
    assert "drop" not in g.nx  # eval dropout returns its input: no vertex
    assert g.nx.has_edge("relu", "fc2")


def test_concat_is_a_vertex_with_both_inputs():
    g = flowprune.trace(Concat(), X)
    [cat] = [v for v, d in g.nx.nodes(data=True) if d["kind"] == "cat"]
    assert set(g.nx.predecessors(cat)) == {"a", "b"} and set(g.nx.successors(cat)) == {"fc"}


def test_trace_leaves_model_untouched_and_restores_train_mode():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flowprune.trace(m, X)
    assert m.training and all(mod.training for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN stats not updated


def test_dict_and_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, a, b=None):
            return a + self.fc(b)

    g1 = flowprune.trace(Two(), (X, X.clone()))
    g2 = flowprune.trace(Two(), {"a": X, "b": X.clone()})
    assert {"input:0", "input:1"} <= set(g1.nx) and {"input:a", "input:b"} <= set(g2.nx)
    # the skip a is not an ancestor of fc(b): no branch
    assert g2.candidates() == []


def test_lstm_flops():
    lstm = nn.LSTM(4, 6, batch_first=True)
    g = flowprune.trace(lstm, torch.randn(2, 5, 4))
    assert g.nx.nodes[""]["flops"] == 2 * 2 * 5 * (4 * 6 * 4 + 4 * 6 * 6)
