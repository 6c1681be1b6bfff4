"""Finding channel groups and checking them: masking units must equal slicing them away.

>>> gs = channel_groups(model, x)          # Groups: a sequence of ChannelGroup
>>> gs["fc1:channels"].units, gs.failed    # failed: {group id: why it was dropped}
"""

from __future__ import annotations

import copy
import random
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .._runtime import call_model, eval_mode
from .._tree import tensor_leaves
from ..adapters import scoring_kwargs
from .groups import ChannelGroup, _delta, build
from .mask import UnitGates
from .slicing import slice_, slices_for
from .trace import ChannelTrace


class Groups(Sequence[ChannelGroup]):
    """The channel groups of a model: index by position or id; ``failed`` holds the groups the check
    dropped (id -> reason); ``savings`` gives exact parameters/MACs of removing sets of units."""

    def __init__(self, groups: list[ChannelGroup], trace: ChannelTrace, failed: dict[str, str]):
        self._groups = groups
        self._by_id = {g.id: g for g in groups}
        self.failed = failed
        self._tensors = {n: t for n, t in trace.tensors.items()}
        self._shapes = {n: tuple(t.shape) for n, t in trace.tensors.items()}
        self._weight_ops = list(trace.weight_ops)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._by_id:
                raise KeyError(f"no channel group {key!r}; groups: {', '.join(self._by_id)}")
            return self._by_id[key]
        return self._groups[key]

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self._groups)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self._groups if g.prunable]

    def savings(self, removed: Mapping[str, Iterable[int]]) -> tuple[int, int]:
        """(parameters, weight MACs) removed by taking ``removed[group id]`` units out."""
        gone: dict[str, dict[int, set]] = {}
        for gid, us in removed.items():
            for m in self[gid].members:
                for u in us:
                    gone.setdefault(m.param, {}).setdefault(m.dim, set()).update(m.index[u])
        return _delta(self._tensors, self._weight_ops, gone)

    def __repr__(self) -> str:
        ok = sum(g.prunable for g in self._groups)
        return f"Groups({len(self._groups)} groups, {ok} prunable, {len(self.failed)} failed the check)"


def channel_groups(
    model: nn.Module,
    example_inputs: Any,
    residual: bool = False,
    check: bool = True,
    seed: int = 0,
) -> Groups:
    """Trace ``model`` (unwrapped, inputs checked: ``flowprune.trace(...).channel_groups()`` does both)
    once with channel labels and return its channel groups.  With ``check`` (default)
    random units of every prunable group are masked and sliced on ``example_inputs``; a group whose
    sliced model differs from the masked one is dropped with a warning (``groups.failed``).

    ``residual=True`` also offers the residual stream's width under LayerNorm/RMSNorm (kind ``width``,
    ``exact=False``: removing a channel changes the norm's statistics, so masked != sliced there; the
    check only requires the sliced model to run with the same output shapes).
    """
    t = ChannelTrace(model, residual=residual)
    t.run(example_inputs)
    groups = build(t)
    failed: dict[str, str] = {}
    if check:
        failed = check_groups(model, groups, example_inputs, seed=seed)
        for gid, why in failed.items():
            warnings.warn(f"channel group {gid} dropped: {why}", stacklevel=2)
        groups = [g for g in groups if g.id not in failed]
    return Groups(groups, t, failed)


def _outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, dict):
        inputs = {**inputs, **scoring_kwargs(model)}
    # the same random draws for the masked and the sliced model (models that sample in eval)
    with torch.random.fork_rng(devices=[]), eval_mode(model), torch.no_grad():
        torch.manual_seed(0)
        return [
            o.float() for o in tensor_leaves(call_model(model, inputs)) if o.is_floating_point()
        ]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float, rtol: float) -> str | None:
    if len(a) != len(b):
        return f"{len(b)} outputs instead of {len(a)}"
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return f"an output of shape {tuple(y.shape)} instead of {tuple(x.shape)}"
        if not x.numel():
            continue
        same = (x == y) | (x.isnan() & y.isnan())  # equal infinities and NaNs where both have them
        finite = x.isfinite()
        scale = x[finite].abs().max().item() if finite.any() else 0.0
        err = torch.where(same, 0.0, (x - y).abs()).max().item()
        if not err <= atol + rtol * scale:
            return f"sliced differs from masked by {err:.3g} (output scale {scale:.3g})"
    return None


def check_groups(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    example_inputs: Any,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> dict[str, str]:
    """Mask and slice random units of every prunable group at once; bisect when they differ.  Groups
    with ``exact=False`` (the residual width under a norm) must only run and keep the output shapes.
    Returns ``{group id: reason}`` for the groups that fail (a few forwards per failing group)."""
    rng = random.Random(seed)
    todo = [g for g in groups if g.prunable and g.units > 1]
    removed = {g.id: sorted(rng.sample(range(g.units), max(1, g.units // 2))) for g in todo}
    failed: dict[str, str] = {}

    def run(gs: list[ChannelGroup], values: bool) -> str | None:
        rem = {g.id: removed[g.id] for g in gs}
        with UnitGates(model, gs) as gates:
            gates.set(rem, 0.0)
            masked = _outputs(model, example_inputs)
        try:
            slices, attrs = slices_for(model, gs, rem)
            sliced_model = slice_(copy.deepcopy(model), slices, attrs)
            sliced = _outputs(sliced_model, example_inputs)
        except Exception as e:  # noqa: BLE001 - any failure of the sliced model is the group's
            return f"the sliced model raised {type(e).__name__}: {e}"
        if not values:  # inexact groups (a norm's statistics change): it must run, same shapes
            masked = [torch.zeros_like(m) for m in masked]
            sliced = [torch.zeros_like(m) for m in sliced]
        return _same(masked, sliced, atol, rtol)

    def bisect(gs: list[ChannelGroup], values: bool) -> None:
        why = run(gs, values)
        if why is None:
            return
        if len(gs) == 1:
            failed[gs[0].id] = why
            return
        half = len(gs) // 2
        bisect(gs[:half], values)
        bisect(gs[half:], values)

    exact = [g for g in todo if g.exact]
    inexact = [g for g in todo if not g.exact]
    if exact:
        bisect(exact, True)
    if inexact:
        bisect(inexact, False)
    return failed
