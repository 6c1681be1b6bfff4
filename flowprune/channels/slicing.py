"""Slicing: physically remove units — index every member parameter/buffer down to the kept indices and
bring module attributes (``in_features``, ``out_channels``, ``groups``, ``num_heads``, ...) in line.

``slices_for`` turns ``{group id: removed units}`` into plain data (``(param, dim, kept indices)`` and
``(module, attribute, value)``) that a plan stores and ``slice_`` replays on a fresh copy of the model.

>>> slices, attrs = slices_for(model, groups, {"fc1:channels": [0, 5]})
>>> slice_(model, slices, attrs)    # in place
"""

from __future__ import annotations

import copy
import inspect
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..adapters import HEAD_ATTRS
from ..errors import PlanError
from .groups import ChannelGroup


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def slices_for(
    model: nn.Module, groups: Sequence[ChannelGroup], removed: Mapping[str, Iterable[int]]
) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, str, int]]]:
    """Kept indices per sliced (param, dim) and the attribute values removing ``removed`` needs."""
    by_id = {g.id: g for g in groups}
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    gone: dict[tuple[str, int], set[int]] = {}
    attrs: list[tuple[str, str, int]] = []
    mods = _modules(model)
    for gid, units in removed.items():
        g = by_id[gid]
        units = sorted(set(units))
        if not units:
            continue
        if len(units) >= g.units:
            raise PlanError(
                f"removing all {g.units} units of {gid} leaves a zero-width layer: remove the branch "
                f"or layer that holds it instead (graph.plan does so)"
            )
        for m in g.members:
            s = gone.setdefault((m.param, m.dim), set())
            for u in units:
                s.update(m.index[u])
        if g.kind == "heads":
            attrs += _head_attrs(mods, g, g.units - len(units))
    slices = []
    for (name, dim), s in sorted(gone.items()):
        size = state[name].shape[dim]
        slices.append((name, dim, [i for i in range(size) if i not in s]))
    return slices, attrs


def _head_attrs(
    mods: dict[str, nn.Module], g: ChannelGroup, kept: int
) -> list[tuple[str, str, int]]:
    """Head counts and sizes on the attention module (and its submodules): scaled by kept/units."""
    out = []
    root = g.module
    for path, m in mods.items():
        if root and not (path == root or path.startswith(root + ".")):
            continue
        for attr in HEAD_ATTRS:
            v = getattr(m, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % g.units == 0:
                out.append((path, attr, v // g.units * kept))
        # a forward that reads head counts from the (shared) config gets its own copy of it with this
        # layer's counts (Phi-3 splits its fused qkv at config.num_attention_heads * head_dim)
        cfg = getattr(m, "config", None)
        if cfg is not None and not isinstance(cfg, nn.Module):
            reads = _forward_source(m)
            for attr in HEAD_ATTRS:
                v = getattr(cfg, attr, None)
                if f"config.{attr}" in reads and isinstance(v, int) and v > 0 and v % g.units == 0:
                    out.append((path, f"config.{attr}", v // g.units * kept))
    return out


def _forward_source(m: nn.Module) -> str:
    try:
        return inspect.getsource(type(m).forward)
    except (OSError, TypeError):
        return ""


def _set_attr(module: nn.Module, attr: str, value: int, copied: set) -> None:
    """``module.attr = value``; ``"config.key"`` sets the key on the module's own shallow copy of
    its config (made once), so the other layers keep theirs."""
    if "." not in attr:
        setattr(module, attr, value)
        return
    owner, key = attr.split(".", 1)
    if (id(module), owner) not in copied:
        setattr(module, owner, copy.copy(getattr(module, owner)))
        copied.add((id(module), owner))
    setattr(getattr(module, owner), key, value)


def holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is a parameter) holding it (tied weights have several)."""
    out: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    for m in model.modules():
        for attr, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, attr, True))
        for attr, b in m._buffers.items():
            if b is not None:
                out.setdefault(id(b), []).append((m, attr, False))
    return out


@torch.no_grad()
def slice_(
    model: nn.Module,
    slices: Sequence[tuple[str, int, Sequence[int]]],
    attrs: Sequence[tuple[str, str, int]] = (),
) -> nn.Module:
    """Slice ``model`` in place (tied weights stay tied); returns it."""
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    held = holders(model)
    new: dict[str, torch.Tensor] = {}
    for name, dim, keep in slices:
        t = new.get(name, state[name])
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=t.device)
        new[name] = t.index_select(dim, idx)
    touched: set[nn.Module] = set()
    for name, t in new.items():
        old = state[name]
        for m, attr, is_param in held[id(old)]:
            if is_param:
                m._parameters[attr] = nn.Parameter(t.contiguous(), requires_grad=old.requires_grad)
            else:
                m._buffers[attr] = t.contiguous()
            touched.add(m)
    # one Parameter per tied group again
    for name in new:
        hold = held[id(state[name])]
        if len(hold) > 1 and hold[0][2]:
            first = hold[0][0]._parameters[hold[0][1]]
            for m, attr, _ in hold[1:]:
                m._parameters[attr] = first
    mods = _modules(model)
    copied: set = set()
    for path, attr, value in attrs:
        _set_attr(mods[path], attr, value, copied)
    for m in touched:
        _sync(m)
    return model


def _sync(m: nn.Module) -> None:
    """Bring a module's size attributes in line with its (sliced) parameters."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        if m.transposed:
            m.in_channels = w.shape[0]
            m.out_channels = w.shape[1] * m.groups
        else:
            if m.groups > 1:
                per_group = m.out_channels // m.groups
                m.groups = w.shape[0] // per_group
            m.out_channels = w.shape[0]
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.normalized_shape[:-1]) + (m.weight.shape[-1],)
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        # a unit is one whole group of channels (the rule joins each group)
        m.num_groups = m.num_groups * m.weight.shape[0] // m.num_channels
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = m.weight.shape[1]
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]
    elif isinstance(m, nn.RNNBase):
        m.hidden_size = m.weight_hh_l0.shape[1]
        m.input_size = m.weight_ih_l0.shape[1]
        m._init_flat_weights()
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # Hugging Face GPT-2 style, W [in, out]
        m.nf = m.weight.shape[1]
        if hasattr(m, "nx"):
            m.nx = m.weight.shape[0]
