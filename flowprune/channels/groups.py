"""Channel groups: the connected components of a channel trace, gathered by the parameters they slice.

A *unit* is one component (one filter with its BN channel and its consumers' input columns, one MLP
neuron, one attention head, one key/value head with the query heads sharing it); a *group* is the set of
units that slice the same parameter dims (one layer's neurons, one attention's heads).

>>> groups = channel_groups(model, x)
>>> g = groups[0]; g.id, g.kind, g.units, g.params_per_unit
('fc1:channels', 'channels', 64, 129, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn

from .trace import ChannelTrace


@dataclass(frozen=True)
class Member:
    """A parameter (or buffer) dim a group slices; ``index[u]`` the indices unit u owns along ``dim``.

    >>> Member("fc1.weight", 0, ((0,), (1,)), "producer").index[1]
    (1,)
    """

    param: str
    dim: int
    index: tuple[tuple[int, ...], ...]
    role: str  # "producer" (rows it computes), "consumer" (input columns), "channel" (per-channel)


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled units removable one by one: ``units`` of them, each owning ``width`` consumer columns.

    ``kind``: ``channels`` (filters, neurons), ``heads`` (attention heads; with GQA one unit is a
    key/value head and the query heads sharing it), ``width`` (the residual stream under a norm, only
    with ``residual=True``; ``exact`` is then False: the norm's statistics change).  ``reason`` says why
    the group cannot be pruned (None: it can).  ``params_per_unit``/``macs_per_unit``: what removing one
    unit saves (exact; sets of units: :func:`savings`).
    """

    id: str
    kind: str
    units: int
    width: int
    members: tuple[Member, ...]
    params_per_unit: int
    macs_per_unit: int
    module: str  # the innermost module containing every member
    exact: bool = True
    reason: str | None = None
    layout: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "units": self.units,
            "width": self.width,
            "module": self.module,
            "exact": self.exact,
            "reason": self.reason,
            "params_per_unit": self.params_per_unit,
            "macs_per_unit": self.macs_per_unit,
            "members": [
                {
                    "param": m.param,
                    "dim": m.dim,
                    "role": m.role,
                    "index": [list(i) for i in m.index],
                }
                for m in self.members
            ],
        }


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else ""


def _common(paths: Iterable[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    out: list[str] = []
    for seg in zip(*parts):
        if len(set(seg)) != 1:
            break
        out.append(seg[0])
    return ".".join(out)


def _resolve_derived(t: ChannelTrace, extra: list, roots_bad: dict) -> None:
    """Rows/columns of weights moved out of a parameter (a chunk of a fused qkv weight, ``W.T``): the
    parameter dim whose index is constant across each slice of the moved weight; appends
    (param, dim, index, atom, role) to ``extra``."""
    for wlab, dim, atoms, role in t.derived:
        names, flat = t.param_of(wlab.reshape(-1))
        n = names[0]
        shape = t.tensors[n].shape
        found = None
        if all(x == n for x in names) and shape:
            multi = torch.from_numpy(np.stack(np.unravel_index(flat.numpy(), shape), 1))
            multi = (
                multi.view(*wlab.shape, len(shape))
                .movedim(dim, 0)
                .reshape(wlab.shape[dim], -1, len(shape))
            )
            for d in range(len(shape)):
                col = multi[:, :, d]
                if bool((col == col[:, :1]).all()):
                    found = d
                    break
        keep = atoms >= 0
        if found is None:
            for a in atoms[keep].unique().tolist():
                roots_bad.setdefault(a, f"weight {n} is not sliced along one dim")
            continue
        extra.append((n, found, multi[:, 0, found][keep], atoms[keep], role))


def components(t: ChannelTrace) -> tuple[np.ndarray, dict, list]:
    """Atom -> component id; component -> reason it cannot go; resolved structural records."""
    bad = dict(t.bad)
    records = list(t.struct)
    _resolve_derived(t, records, bad)
    edges = [e.numpy() for e in t.edges]
    # the same parameter index produced or consumed under two atoms (tied or shared weights): one unit
    by: dict[tuple[str, int], list] = {}
    for n, d, idx, at, _ in records:
        by.setdefault((n, d), []).append((idx.numpy(), at.numpy()))
    for lst in by.values():
        idx = np.concatenate([i for i, _ in lst])
        at = np.concatenate([a for _, a in lst])
        order = np.lexsort((at, idx))
        idx, at = idx[order], at[order]
        same = idx[1:] == idx[:-1]
        if same.any():
            edges.append(np.stack([at[1:][same], at[:-1][same]]))
    n = t.n_atoms
    if edges:
        e = np.concatenate(edges, 1)
        m = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
    else:
        m = coo_matrix((n, n))
    _, comp = connected_components(m, directed=False)
    why: dict[int, str] = {}
    for a, r in bad.items():
        why.setdefault(int(comp[a]), r)
    for op, pairs in t.together:
        a, b = comp[pairs[0].numpy()], comp[pairs[1].numpy()]
        for c in np.unique(np.concatenate([a[a != b], b[a != b]])).tolist():
            why.setdefault(
                int(c), f"{op} with a tensor made in the forward that is not sliced with them"
            )
    return comp, why, records


def _through_links(t: ChannelTrace, plab: Tensor, atoms: Tensor) -> tuple[Tensor, Tensor]:
    """Alignments carried to the parameter elements linked to an aligned one (``ChannelTrace.link``):
    a frozen BatchNorm's running statistics go with the scale they were folded into."""
    if not t.links:
        return plab, atoms
    pairs = torch.cat(t.links, 1)  # negated labels (>= 2)
    keys, inv = torch.unique(torch.cat([pairs.flatten(), -plab]), return_inverse=True)
    n = len(keys)
    e = inv[: pairs.numel()].view(2, -1).numpy()
    m = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
    _, comp = connected_components(m, directed=False)
    comp = torch.from_numpy(comp)
    mine = comp[inv[pairs.numel() :]]  # the link component of each aligned element
    members = {}
    for k, c in enumerate(comp.tolist()):
        members.setdefault(c, []).append(k)
    extra_p, extra_a = [plab], [atoms]
    for c in torch.unique(mine).tolist():
        if len(members[c]) < 2:
            continue
        sel = mine == c
        for k in members[c]:
            extra_p.append(torch.full((int(sel.sum()),), -int(keys[k]), dtype=torch.long))
            extra_a.append(atoms[sel])
    return torch.cat(extra_p), torch.cat(extra_a)


def _elementwise_members(t: ChannelTrace, comp: np.ndarray) -> list:
    """Per-channel parameters met element-wise (BatchNorm, biases, scales): (param, dim, index, comp)
    when each index along one dim belongs to one unit; parameters shared across units are not sliced."""
    recs = [(p, a) for p, a, r in t.aligned if r == "elem"]
    if not recs:
        return []
    plab = torch.cat([p for p, _ in recs])
    atoms = torch.cat([a for _, a in recs])
    plab, atoms = _through_links(t, plab, atoms)
    atoms = atoms.numpy()
    names, flat = t.param_of(plab)
    out = []
    by: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by.setdefault(n, []).append(i)
    for n, rows in by.items():
        shape = t.tensors[n].shape
        if not shape:
            continue
        sel = np.array(rows)
        multi = np.stack(np.unravel_index(flat.numpy()[sel], shape), 1)
        cs = comp[atoms[sel]]
        for d in range(len(shape)):
            if shape[d] == 1:
                continue
            pairs = np.unique(np.stack([multi[:, d], cs], 1), axis=0)
            if len(np.unique(pairs[:, 0])) == len(pairs):  # each index in one unit
                out.append((n, d, pairs[:, 0], pairs[:, 1]))
                break
    return out


_ROLES = ("channel", "producer", "consumer")  # a column both produced and consumed is masked


def _units(t: ChannelTrace, comp: np.ndarray, records: list) -> dict[int, dict]:
    """component -> {(param, dim): (role, sorted indices)}, from the structural records and the
    per-channel parameters (those only for components that have structural members)."""
    # K: (param, dim) key, X: index along it, C: component, R: role code; one entry per record element
    keys: dict[tuple[str, int], int] = {}
    K, X, C, R = [], [], [], []
    for n, d, idx, at, role in records:
        K.append(np.full(len(idx), keys.setdefault((n, d), len(keys))))
        X.append(idx.numpy())
        C.append(comp[at.numpy()])
        R.append(np.full(len(idx), _ROLES.index(role)))
    structural = np.unique(np.concatenate(C)) if C else np.zeros(0, dtype=np.int64)
    for n, d, idx, cs in _elementwise_members(t, comp):
        keep = np.isin(cs, structural)
        K.append(np.full(int(keep.sum()), keys.setdefault((n, d), len(keys))))
        X.append(np.asarray(idx)[keep])
        C.append(np.asarray(cs)[keep])
        R.append(np.zeros(int(keep.sum()), dtype=np.int64))
    if not K:
        return {}
    K, X, C, R = (np.concatenate(a).astype(np.int64) for a in (K, X, C, R))
    order = np.lexsort((X, K, C))
    K, X, C, R = K[order], X[order], C[order], R[order]
    new_ck = np.r_[True, (C[1:] != C[:-1]) | (K[1:] != K[:-1])]
    seg = np.flatnonzero(new_ck)
    role = np.maximum.reduceat(R, seg)
    first = np.r_[True, new_ck[1:] | (X[1:] != X[:-1])]  # each index once per (component, dim)
    K, X, C, new_ck = K[first], X[first], C[first], new_ck[first]
    seg = np.flatnonzero(new_ck)
    ends = np.r_[seg[1:], len(K)]
    names = list(keys)
    Xl = X.tolist()
    units: dict[int, dict] = {}
    for s0, e, r in zip(seg.tolist(), ends.tolist(), role.tolist()):
        units.setdefault(int(C[s0]), {})[names[K[s0]]] = (_ROLES[r], tuple(Xl[s0:e]))
    return units


def build(t: ChannelTrace) -> list[ChannelGroup]:
    """The channel groups of a finished trace."""
    comp, why, records = components(t)
    units = _units(t, comp, records)
    heads = {int(comp[a]) for a in t.heads}
    normed = {int(comp[a]) for a in t.normed}
    macs_pair: dict[int, int] = {}
    for atoms, macs in t.pair_ops:
        for a, m in zip(comp[atoms.numpy()].tolist(), macs.tolist()):
            macs_pair[a] = macs_pair.get(a, 0) + m
    order = {n: i for i, n in enumerate(t.tensors)}
    by_sig: dict[tuple, list[int]] = {}
    for c, mem in units.items():
        sig = tuple(sorted(mem, key=lambda k: (order[k[0]], k[1])))
        by_sig.setdefault(sig, []).append(c)
    groups = []
    used: set[str] = set()
    for sig, comps in sorted(by_sig.items(), key=lambda kv: (order[kv[0][0][0]], kv[0][0][1])):
        first = sig[0]
        comps.sort(key=lambda c: units[c][first][1][0])
        members = tuple(
            Member(n, d, tuple(units[c][(n, d)][1] for c in comps), units[comps[0]][(n, d)][0])
            for n, d in sig
        )
        c0 = comps[0]
        kind = "heads" if c0 in heads else "width" if c0 in normed else "channels"
        cons = [m for m in members if m.role == "consumer"]
        width = len(cons[0].index[0]) if cons else len(members[0].index[0])
        prod = [m for m in members if m.role == "producer"]
        first_param = prod[0].param if prod else members[0].param
        base = _module_of(first_param) or first_param  # a parameter of the root: its own name
        gid = f"{base}:{kind}"
        k = 1
        while gid in used:
            k += 1
            gid = f"{base}:{kind}{k}"
        used.add(gid)
        reason = next((why[c] for c in comps if c in why), None)
        if reason is None and not cons:
            reason = "no layer consumes these channels"
        if reason is None and len(comps) == 1:
            reason = (
                "one unit: every head shares one key/value head"
                if kind == "heads"
                else "one unit: every channel is coupled to every other (a norm or op over them)"
            )
        params, macs = _unit_savings(t, members, 0)
        groups.append(
            ChannelGroup(
                id=gid,
                kind=kind,
                units=len(comps),
                width=width,
                members=members,
                params_per_unit=params,
                macs_per_unit=macs + macs_pair.get(c0, 0),
                module=_common(_module_of(m.param) for m in members),
                exact=c0 not in normed,
                reason=reason,
            )
        )
    return groups


def _unit_savings(t: ChannelTrace, members: tuple[Member, ...], u: int) -> tuple[int, int]:
    removed: dict[str, dict[int, set]] = {}
    for m in members:
        removed.setdefault(m.param, {}).setdefault(m.dim, set()).update(m.index[u])
    return _delta(t.tensors, t.weight_ops, removed)


def _delta(
    tensors: Mapping[str, torch.Tensor], weight_ops: list, removed: dict[str, dict[int, set]]
) -> tuple[int, int]:
    params = macs = 0
    dnumel = {}
    for n, dims in removed.items():
        shape = list(tensors[n].shape)
        new = [s - len(dims.get(d, ())) for d, s in enumerate(shape)]
        dnumel[n] = int(np.prod(shape)) - int(np.prod(new))
    params = sum(v for n, v in dnumel.items() if isinstance(tensors[n], nn.Parameter))
    macs = sum(dnumel.get(n, 0) * pos for n, pos in weight_ops)
    return params, macs
