"""Magnitude criteria for channel-group units, and choosing which units to remove; both match
Torch-Pruning 1.6.1 (``GroupMagnitudeImportance`` and ``BasePruner``) so its results can be reproduced.

A unit's score sums ``|w|^p`` over every weight row/column the unit owns, member by member (a
filter's conv rows, its BatchNorm scale, its consumers' input columns), reduces the per-member scores
(mean over members by default) and normalises the group's scores (divided by their mean by default).

>>> gs = channel_groups(model, x)
>>> scores = magnitude_scores(model, gs.prunable(), p=2)
>>> removed = select_units(gs, scores, ratio=0.5, scope="layer")
>>> slices, attrs = slices_for(model, gs, removed)
>>> pruned = slice_(copy.deepcopy(model), slices, attrs)
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .groups import ChannelGroup, Member

__all__ = ["TARGET_TYPES", "unit_magnitude", "magnitude_scores", "select_units"]

# the modules whose parameters Torch-Pruning's magnitude importance reads (its default target_types)
TARGET_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
)

_REDUCTIONS = ("mean", "sum", "max", "prod", "first")


def _counted(
    model: nn.Module, m: Member, bias: bool, types: tuple[type, ...]
) -> torch.Tensor | None:
    """The parameter a member slices when Torch-Pruning's importance counts it, else None.

    Counted: the ``weight`` of a conv / linear / BatchNorm / LayerNorm (and their ``bias`` with
    ``bias=True``).  Not counted: buffers (running statistics), parameters of other modules (RMSNorm,
    embeddings, bare parameters) and depthwise convolutions (``groups == out_channels > 1``: Torch-Pruning
    gives them their own pruning functions, which its magnitude importance does not handle).
    """
    path, _, leaf = m.param.rpartition(".")
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(mod, types) or leaf not in (("weight", "bias") if bias else ("weight",)):
        return None
    if (
        isinstance(mod, nn.modules.conv._ConvNd)
        and mod.groups == mod.out_channels
        and mod.out_channels > 1
    ):
        return None
    t = mod._parameters.get(leaf)
    return t if isinstance(t, torch.Tensor) else None


def _normalize(s: torch.Tensor, normalizer: str | Callable | None) -> torch.Tensor:
    if normalizer is None:
        return s
    if callable(normalizer):
        return normalizer(s)
    if normalizer == "mean":
        return s / s.mean()
    if normalizer == "sum":
        return s / s.sum()
    if normalizer == "max":
        return s / s.max()
    if normalizer == "standarization":  # Torch-Pruning's spelling
        return (s - s.min()) / (s.max() - s.min() + 1e-8)
    if normalizer == "gaussian":
        return (s - s.mean()) / (s.std() + 1e-8)
    raise ValueError(f"unknown normalizer {normalizer!r}")


@torch.no_grad()
def unit_magnitude(
    model: nn.Module,
    group: ChannelGroup,
    p: float = 2,
    reduction: str = "mean",
    normalizer: str | Callable | None = "mean",
    bias: bool = False,
    types: Sequence[type] = TARGET_TYPES,
) -> torch.Tensor:
    """Per-unit magnitude score of ``group`` (a float32 tensor of ``group.units`` values), as
    ``tp.importance.MagnitudeImportance(p, group_reduction=reduction, normalizer=normalizer)`` scores
    the same group.

    For each counted member (see ``_counted``: weights of convs, linears, BatchNorm, LayerNorm) the
    score of unit u is ``sum |w|^p`` over the slices ``w.select(dim, i)`` for ``i`` in the unit's indices
    (a filter's whole row, a consumer's input column, a BN scale; several indices when the unit owns
    several, e.g. a flattened conv channel feeding ``h*w`` linear columns).  ``reduction`` combines the
    members: ``mean`` (sum divided by the number of counted members), ``sum``, ``max``, ``prod`` or
    ``first`` (first counted member only).  ``normalizer``: ``mean`` (scores / their mean), ``sum``,
    ``max``, ``standarization``, ``gaussian``, None or a callable.

    Raises ValueError when no member is counted (Torch-Pruning skips such groups; see
    :func:`magnitude_scores`).

    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    >>> g = channel_groups(m, torch.randn(1, 3, 8, 8))["0:channels"]
    >>> unit_magnitude(m, g, p=1, normalizer=None)   # (|conv0 row| + |bn scale| + |conv3 column|) / 3
    tensor([...])  # 4 values
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; one of {', '.join(_REDUCTIONS)}")
    per_member: list[torch.Tensor] = []
    for m in group.members:
        t = _counted(model, m, bias, tuple(types))
        if t is None:
            continue
        w = t.detach().movedim(m.dim, 0).reshape(t.shape[m.dim], -1).float()
        per_index = w.abs().pow(p).sum(1)
        unit = torch.stack(
            [per_index[list(ix)].sum() if ix else per_index.new_zeros(()) for ix in m.index]
        )
        per_member.append(unit)
    if not per_member:
        raise ValueError(f"group {group.id}: no conv/linear/norm weight among its members to score")
    stacked = torch.stack(per_member)
    if reduction == "mean":
        s = stacked.sum(0) / len(per_member)
    elif reduction == "sum":
        s = stacked.sum(0)
    elif reduction == "max":
        s = stacked.max(0).values
    elif reduction == "prod":
        s = stacked.prod(0)
    else:
        s = stacked[0]
    return _normalize(s, normalizer)


def magnitude_scores(
    model: nn.Module, groups: Iterable[ChannelGroup], **kwargs
) -> dict[str, torch.Tensor]:
    """``{group id: unit_magnitude(model, group, **kwargs)}`` over the prunable groups; groups with
    nothing to score are left out (as Torch-Pruning skips them).

    >>> scores = magnitude_scores(model, channel_groups(model, x), p=1)
    """
    out = {}
    for g in groups:
        if not g.prunable:
            continue
        try:
            out[g.id] = unit_magnitude(model, g, **kwargs)
        except ValueError:
            continue
    return out


def select_units(
    groups: Iterable[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    scope: str = "layer",
) -> dict[str, list[int]]:
    """Units to remove (``{group id: sorted unit indices}``) from the prunable groups that have scores,
    lowest scores first, the way ``tp.pruner.BasePruner`` picks channels in one step.

    ``scope="layer"``: each group loses ``n - int(n * (1 - ratio))`` of its ``n`` units (its
    ``torch.topk(scores, k, largest=False)``).  ``scope="global"``: all scores are ranked together,
    ``k = N - int(N * (1 - ratio))`` over the ``N`` units of all groups; every unit scoring at or below the
    k-th lowest score goes (ties included).  A group is never emptied: when every unit would go, the
    best-scoring unit stays (Torch-Pruning instead leaves such a group whole: ``check_pruning_group``).

    >>> select_units(gs, {"0:channels": torch.tensor([3., 1., 2., 4.])}, 0.5)
    {'0:channels': [1, 2]}
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
    todo = [g for g in groups if g.prunable and g.id in scores]
    for g in todo:
        if scores[g.id].numel() != g.units:
            raise ValueError(f"{g.id}: {scores[g.id].numel()} scores for {g.units} units")
    out: dict[str, list[int]] = {}
    if scope == "layer":
        for g in todo:
            s = scores[g.id].detach().float().cpu().reshape(-1)
            k = min(g.units - int(g.units * (1 - ratio)), g.units - 1)
            if k > 0:
                out[g.id] = sorted(torch.topk(s, k=k, largest=False).indices.tolist())
        return out
    if not todo:
        return out
    allsc = torch.cat([scores[g.id].detach().float().cpu().reshape(-1) for g in todo])
    k = len(allsc) - int(len(allsc) * (1 - ratio))
    if k <= 0:
        return out
    thres = torch.topk(allsc, k=k, largest=False).values[-1]
    for g in todo:
        s = scores[g.id].detach().float().cpu().reshape(-1)
        gone = (s <= thres).nonzero().view(-1).tolist()
        if len(gone) >= g.units:
            best = int(torch.argmax(s))
            gone = [u for u in gone if u != best]
        if gone:
            out[g.id] = sorted(gone)
    return out


def lamp_normalize(s: torch.Tensor) -> torch.Tensor:
    """LAMP normalisation of squared magnitudes ``s``: ``s_u / Σ_{v: s_v ≥ s_u} s_v`` (ties count in
    full, so tied units score alike; the largest unit scores 1).

    >>> lamp_normalize(torch.tensor([1.0, 4.0, 2.0]))   # 1/7, 4/4, 2/6
    tensor([0.1429, 1.0000, 0.3333])
    """
    s = s.detach().reshape(-1).double()
    denom = (s[None, :] * (s[None, :] >= s[:, None])).sum(1)
    return (s / denom.clamp_min(torch.finfo(s.dtype).tiny)).float()


def lamp(
    model: nn.Module,
    group: ChannelGroup,
    reduction: str = "mean",
    bias: bool = False,
    types: Sequence[type] = TARGET_TYPES,
) -> torch.Tensor:
    """LAMP score (Lee et al. 2021, layer-adaptive magnitude pruning) of each unit of ``group``: its
    squared-L2 magnitude (``unit_magnitude(p=2, normalizer=None)``) divided by the sum of the squared
    magnitudes of every unit of the group at least as large (see :func:`lamp_normalize`).  Within one
    group it ranks units as magnitude does; the scores are comparable across groups.

    >>> lamp(model, graph.channel_groups()["0:channels"])
    tensor([...])
    """
    s = unit_magnitude(
        model, group, p=2, reduction=reduction, normalizer=None, bias=bias, types=types
    )
    return lamp_normalize(s)


__all__ += ["lamp", "lamp_normalize"]
