"""Closed-form checks of flowprune.channels.magnitude (Torch-Pruning's magnitude criterion and its
channel selection), on a tiny conv -> bn -> conv model; Torch-Pruning itself is not needed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flowprune.channels import ChannelGroup, Member, channel_groups
from flowprune.channels.magnitude import magnitude_scores, select_units, unit_magnitude


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        # conv0 rows (out channel u): |.|^1 sums 1, 2, 3 ; |.|^2 sums 1, 2, 5
        m[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0], [2.0, 1.0]]).view(3, 2, 1, 1))
        m[0].bias.copy_(torch.tensor([10.0, 20.0, 30.0]))  # biases are not counted (bias=False)
        m[1].weight.copy_(torch.tensor([1.0, -2.0, 3.0]))  # BN scale: |.| 1 2 3, |.|^2 1 4 9
        m[1].bias.copy_(torch.tensor([5.0, 5.0, 5.0]))
        m[1].running_mean.copy_(torch.tensor([100.0, 100.0, 100.0]))  # buffers are not counted
        # conv3 columns (in channel u): |.|^1 sums 3, 0, 1 ; |.|^2 sums 5, 0, 1
        m[3].weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [-2.0, 0.0, 0.0]]).view(2, 3, 1, 1))
    return m.eval()


@pytest.fixture(scope="module")
def tiny():
    m = _tiny()
    return m, channel_groups(m, torch.randn(2, 2, 4, 4))


def test_group_found(tiny):
    _, gs = tiny
    g = gs["0:channels"]
    assert g.prunable and g.units == 3


def test_l1_mean_reduction(tiny):
    m, gs = tiny
    s = unit_magnitude(m, gs["0:channels"], p=1, normalizer=None)
    # (conv0 row + bn scale + conv3 column) / 3 members
    expected = torch.tensor([1 + 1 + 3, 2 + 2 + 0, 3 + 3 + 1]) / 3
    torch.testing.assert_close(s, expected)


def test_l2_sum_and_mean_normalizer(tiny):
    m, gs = tiny
    g = gs["0:channels"]
    raw = torch.tensor([1 + 1 + 5, 2 + 4 + 0, 5 + 9 + 1], dtype=torch.float32)
    torch.testing.assert_close(unit_magnitude(m, g, p=2, reduction="sum", normalizer=None), raw)
    torch.testing.assert_close(unit_magnitude(m, g, p=2), (raw / 3) / (raw / 3).mean())


def test_other_reductions_and_bias(tiny):
    m, gs = tiny
    g = gs["0:channels"]
    torch.testing.assert_close(
        unit_magnitude(m, g, p=1, reduction="max", normalizer=None), torch.tensor([3.0, 2.0, 3.0])
    )
    # first counted member: conv0's rows (state_dict order)
    torch.testing.assert_close(
        unit_magnitude(m, g, p=1, reduction="first", normalizer=None), torch.tensor([1.0, 2.0, 3.0])
    )
    # bias=True also counts conv0's bias and BN's shift: 5 members
    with_bias = unit_magnitude(m, g, p=1, reduction="sum", normalizer=None, bias=True)
    torch.testing.assert_close(
        with_bias, torch.tensor([5 + 10 + 5, 4 + 20 + 5, 7 + 30 + 5], dtype=torch.float32)
    )
    with pytest.raises(ValueError):
        unit_magnitude(m, g, reduction="median")


def test_multi_index_units_and_nothing_to_score():
    # a unit owning two columns of a linear (a flattened channel) sums both
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    model = nn.Sequential(lin)
    g = ChannelGroup(
        "g", "channels", 2, 2, (Member("0.weight", 1, ((0, 1), (2, 3)), "consumer"),), 2, 2, ""
    )
    torch.testing.assert_close(
        unit_magnitude(model, g, p=1, normalizer=None), torch.tensor([3.0, 7.0])
    )
    # only a buffer-like / non-target parameter: nothing to score
    emb = nn.Sequential(nn.Embedding(3, 2))
    g2 = ChannelGroup(
        "e", "channels", 2, 1, (Member("0.weight", 1, ((0,), (1,)), "producer"),), 3, 0, ""
    )
    with pytest.raises(ValueError):
        unit_magnitude(emb, g2)
    assert magnitude_scores(emb, [g2]) == {}


def _g(gid: str, units: int, reason: str | None = None) -> ChannelGroup:
    return ChannelGroup(gid, "channels", units, 1, (), 1, 1, "", reason=reason)


def test_select_layer_rounding():
    gs = [_g("a", 4), _g("b", 5), _g("c", 3, reason="reaches the model output")]
    sc = {
        "a": torch.tensor([4.0, 1.0, 3.0, 2.0]),
        "b": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0]),
        "c": torch.tensor([1.0, 2.0, 3.0]),
    }
    # n - int(n * (1 - 0.5)): a loses 4 - 2 = 2, b loses 5 - int(2.5) = 3; c is not prunable
    assert select_units(gs, sc, 0.5, "layer") == {"a": [1, 3], "b": [1, 3, 4]}
    # never all units of a group
    assert select_units(gs, sc, 1.0, "layer") == {"a": [1, 2, 3], "b": [1, 2, 3, 4]}
    assert select_units(gs, sc, 0.0, "layer") == {}


def test_select_global():
    gs = [_g("a", 3), _g("b", 3)]
    sc = {"a": torch.tensor([0.1, 0.5, 0.2]), "b": torch.tensor([1.0, 0.3, 2.0])}
    # 6 units, ratio 0.5: k = 6 - int(3.0) = 3 lowest overall: 0.1, 0.2, 0.3
    assert select_units(gs, sc, 0.5, "global") == {"a": [0, 2], "b": [1]}
    # ties at the threshold all go
    # ratio 0.3: k = 6 - int(4.2) = 2, threshold 0.3, three units at or below it
    sc2 = {"a": torch.tensor([0.1, 0.3, 0.9]), "b": torch.tensor([0.3, 1.0, 2.0])}
    assert select_units(gs, sc2, 0.3, "global") == {"a": [0, 1], "b": [0]}
    # a group whose every unit falls under the threshold keeps its best one
    sc3 = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 6.0, 7.0])}
    assert select_units(gs, sc3, 0.5, "global") == {"a": [0, 1]}
    with pytest.raises(ValueError):
        select_units(gs, sc, 0.5, "model")
    with pytest.raises(ValueError):
        select_units(gs, {"a": torch.ones(2)}, 0.5)


def test_end_to_end_slicing_keeps_best(tiny):
    from flowprune.channels import slice_, slices_for

    m, gs = tiny
    sc = magnitude_scores(m, gs, p=1)
    assert set(sc) == {"0:channels"}
    # L1 scores (5, 4, 7) / 3; 3 - int(1.5) = 2 units go: the two lowest
    removed = select_units(gs, sc, 0.5, "layer")
    assert removed == {"0:channels": [0, 1]}
    small = slice_(copy.deepcopy(m), *slices_for(m, gs, removed))
    assert small[0].out_channels == 1 and small[3].in_channels == 1
    torch.testing.assert_close(small[1].weight, torch.tensor([3.0]))
    assert m[0].out_channels == 3  # the caller's model is untouched
