"""FlowGraph: the traced computation graph of a model, and its removal candidates."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable

import networkx as nx
from torch import nn

from .candidates import Candidate, call_id, find_candidates  # noqa: F401  (call_id re-exported)
from .recorder import CallRecord, MergeRecord, Recorder
from .removal import Effect, effect, encloses, within  # noqa: F401  (encloses: re-exported)

if TYPE_CHECKING:
    from typing import Mapping

    from ..channels import Groups
    from ..plan import Plan


class FlowGraph:
    """A model's computation graph: ``nx`` is a ``networkx.DiGraph`` whose vertices are leaf-module calls,
    merges (add/mul/cat) and the ``input:*``/``output`` vertices, with attributes ``path``, ``kind``,
    ``params``, ``flops``, ``in_shape``, ``out_shape``.

    >>> g = flowprune.trace(model, x)
    >>> [c.id for c in g.candidates()]
    ['blocks.0:branch', 'blocks.0:layer', ...]
    """

    def __init__(self, model: nn.Module, example_inputs: Any, rec: Recorder):
        from ..plan import fingerprint

        self.model = model
        # the model as traced: a plan made from this graph is for this structure only (checked again
        # when planning and when the plan is applied)
        self.fingerprint = fingerprint(model)
        self.example_inputs = example_inputs
        self.nx: nx.DiGraph = rec.graph
        self.calls: list[CallRecord] = rec.calls
        self.merges: list[MergeRecord] = rec.merges
        self.consumers: dict[int, set[str]] = rec.consumers
        for v, d in self.nx.nodes(data=True):
            if (
                d.get("kind") not in ("input", "output")
                and "cid" in d
                and d["kind"] not in ("add", "mul", "cat")
            ):
                d["flops"] = self.calls[d["cid"]].flops
        self._by_path: dict[str, list[CallRecord]] = {}
        for c in self.calls:
            self._by_path.setdefault(c.path, []).append(c)
        self._owners: dict[int, tuple[int, list[str]]] = {}
        for mpath, m in model.named_modules(remove_duplicate=False):
            for p in m.parameters(recurse=False):
                self._owners.setdefault(id(p), (p.numel(), []))[1].append(mpath)

    # -- lookups used by candidates / removal -------------------------------------------------------
    def call(self, cid: int) -> CallRecord:
        return self.calls[cid]

    def calls_of(self, path: str) -> list[CallRecord]:
        return self._by_path.get(path, [])

    def subtree(self, cid: int) -> set[int]:
        """Call ``cid`` and every call made while it ran (cached)."""
        cache = self.__dict__.setdefault("_subtree", {})
        if cid not in cache:
            out, todo = set(), [cid]
            while todo:
                c = todo.pop()
                out.add(c)
                todo += self.calls[c].children
            cache[cid] = out
        return cache[cid]

    def inner_calls(self, cid: int) -> dict[str, int]:
        """{module path: number of calls made while call ``cid`` ran} (not counting ``cid``; cached):
        what replaying a recording of ``cid`` skips."""
        cache = self.__dict__.setdefault("_inner_calls", {})
        if cid not in cache:
            inner: dict[str, int] = {}
            for x in self.subtree(cid) - {cid}:
                path = self.calls[x].path
                inner[path] = inner.get(path, 0) + 1
            cache[cid] = inner
        return cache[cid]

    def aliases(self, path: str) -> list[str]:
        """Every path of the module object at ``path`` (``path`` first): a list that holds one module twice
        (``nn.ModuleList([blk, blk])``) gives ``["layers.0", "layers.1"]``; submodules likewise."""
        cache = self.__dict__.get("_aliases")
        if cache is None:
            by_obj: dict[int, list[str]] = {}
            for name, m in self.model.named_modules(remove_duplicate=False):
                by_obj.setdefault(id(m), []).append(name)
            cache = self.__dict__["_aliases"] = {n: ns for ns in by_obj.values() for n in ns}
        return [path] + [p for p in cache.get(path, [path]) if p != path]

    def owner_path(self, v: str) -> str:
        """Module path of the call that owns vertex ``v`` (a leaf's own path, a merge's enclosing module)."""
        return self.calls[self.nx.nodes[v]["cid"]].path

    def vertices_within(self, path: str) -> set[str]:
        """Vertices owned by module ``path`` or its submodules (cached: removal analysis asks often)."""
        cache = self.__dict__.setdefault("_within", {})
        if path not in cache:
            cache[path] = {
                v
                for v, d in self.nx.nodes(data=True)
                if "cid" in d and within(self.calls[d["cid"]].path, path)
            }
        return cache[path]

    def module_paths_by_depth(self) -> list[str]:
        return sorted(self._by_path, key=lambda p: (p.count(".") if p else -1, p))

    def params_within(self, paths: Iterable[str]) -> int:
        """Parameters owned only by modules inside ``paths`` (tied weights used elsewhere do not count)."""
        paths = list(paths)
        if len(paths) == 1:  # cached: removal analysis asks for every module path
            cache = self.__dict__.setdefault("_params1", {})
            if paths[0] not in cache:
                cache[paths[0]] = self._params(paths)
            return cache[paths[0]]
        return self._params(paths)

    def _params(self, paths: list[str]) -> int:
        return sum(
            n
            for n, owners in self._owners.values()
            if all(any(within(o, p) for p in paths) for o in owners)
        )

    def flops_of(self, path: str) -> int:
        return sum(c.flops for c in self.calls_of(path))

    @cached_property
    def live(self) -> set[str]:
        """Vertices whose output reaches the model output."""
        return nx.ancestors(self.nx, "output") | {"output"}

    @property
    def total_params(self) -> int:
        return sum(n for n, _ in self._owners.values())

    @property
    def total_flops(self) -> int:
        return self.calls[0].flops if self.calls else 0

    # -- public --------------------------------------------------------------------------------------
    def candidates(self, kind: str | None = None) -> list[Candidate]:
        """Removable branches and layers, in forward order (``kind`` filters: "branch" or "layer")."""
        if "_cands" not in self.__dict__:
            self._cands = find_candidates(self)
        return [c for c in self._cands if kind is None or c.kind == kind]

    def candidate(self, cand_id: str) -> Candidate:
        """The candidate with id ``cand_id``; KeyError listing close ids otherwise."""
        for c in self.candidates():
            if c.id == cand_id:
                return c
        import difflib

        from ..errors import CandidateError

        close = difflib.get_close_matches(cand_id, [c.id for c in self.candidates()], n=3)
        raise CandidateError(
            f"no candidate {cand_id!r}" + (f"; did you mean {close}?" if close else "")
        )

    def effect(self, ids: Iterable[str], fill: str = "zeros") -> Effect:
        """Replacements, parameters and FLOPs saved by removing the candidates ``ids`` together."""
        return effect(self, [self.candidate(i) for i in ids], fill)

    def channel_groups(self, residual: bool = False, check: bool = True) -> "Groups":
        """The model's channel groups (filters, neurons, heads; ``flowprune.channels``), found by one
        extra forward on the graph's example inputs and checked (masked == sliced); cached.

        >>> [(g.id, g.kind, g.units) for g in graph.channel_groups().prunable()]
        [('layers.0.self_attn.q_proj:heads', 'heads', 2), ('layers.0.mlp.gate_proj:channels', ...)]
        """
        from ..channels import channel_groups

        key = (residual, check)
        cache = self.__dict__.setdefault("_channel_groups", {})
        if key not in cache:
            cache[key] = channel_groups(self.model, self.example_inputs, residual, check)
        return cache[key]

    def plan(
        self,
        ids: Iterable[str] = (),
        fill: str = "zeros",
        units: "Mapping[str, Iterable[int]] | None" = None,
    ) -> "Plan":
        """A Plan removing the candidates ``ids`` (see ``flowprune.apply``); removed branches are
        replaced by zeros, or with ``fill="mean"``/``"linear"`` by a compensation fitted at apply time.
        ``units={group id: [unit, ...]}`` slices units out of channel groups (``channel_groups()``).

        >>> graph.plan(units={"layers.0.mlp.gate_proj:channels": [0, 5, 9]})
        """
        from ..errors import InputError, PlanError
        from ..plan import Plan, fingerprint

        if units is not None:
            if fingerprint(self.model) != self.fingerprint:
                raise PlanError(
                    "the model changed since this graph was traced: trace it again and plan from "
                    "the new graph"
                )
            return _unit_plan(self, list(ids), units, fill)

        if isinstance(ids, str):
            raise InputError(
                f"graph.plan takes a list of candidate ids, got the string {ids!r}: pass [{ids!r}]"
            )
        if fingerprint(self.model) != self.fingerprint:
            raise PlanError(
                "the model changed since this graph was traced (e.g. by apply_), so the graph's "
                "candidates no longer describe it: trace the model again and plan from the new graph"
            )
        ids = list(ids)
        unknown = [
            i for i in ids if not isinstance(i, str) or i not in {c.id for c in self.candidates()}
        ]
        if unknown:
            self.candidate(str(unknown[0]))  # KeyError naming close ids
        return Plan.from_graph(self, ids, fill)

    def summary(self) -> str:
        """A plain-text table of the candidates."""
        rows = [f"{'id':<48} {'kind':<7} {'params':>10} {'MFLOPs':>10}"]
        for c in self.candidates():
            rows.append(f"{c.id:<48} {c.kind:<7} {c.params:>10,} {c.flops / 1e6:>10.2f}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (
            f"FlowGraph({type(self.model).__name__}: {self.nx.number_of_nodes()} vertices, "
            f"{self.nx.number_of_edges()} edges, {len(self.candidates())} candidates)"
        )


def _unit_plan(
    graph: FlowGraph, ids: list[str], removed: "Mapping[str, Iterable[int]]", fill: str
) -> "Plan":
    """A Plan removing candidates ``ids`` and slicing ``removed = {group id: [unit, ...]}`` out of
    the graph's channel groups.  A group losing every unit is its branch's removal (layer collapse):
    the branch candidate whose module is the group's."""
    from dataclasses import replace

    from ..channels import slices_for
    from ..errors import PlanError
    from ..plan import Attr, Plan, Slice, Units

    groups = graph.channel_groups()
    if fill not in ("zeros", "obs", "mean"):
        raise PlanError(
            f"a plan slicing units takes fill='zeros' (nothing refitted), 'obs' (least-squares refit "
            f"of the consumers' kept columns) or 'mean' (bias compensation); got {fill!r}"
        )
    if not isinstance(removed, dict):
        raise PlanError(
            f"units must be a dict {{group id: [unit, ...]}}, got {type(removed).__name__}"
        )
    clean: dict[str, list[int]] = {}
    ids = list(ids)
    for gid, us in removed.items():
        if gid not in {g.id for g in groups}:
            why = groups.failed.get(gid)
            raise PlanError(
                f"no prunable channel group {gid!r}"
                + (f" (dropped by the check: {why})" if why else "; see graph.channel_groups()")
            )
        g = groups[gid]
        if not g.prunable:
            raise PlanError(f"channel group {gid} cannot be pruned: {g.reason}")
        us = sorted({int(u) for u in us})
        bad = [u for u in us if not 0 <= u < g.units]
        if bad:
            raise PlanError(f"{gid} has units 0..{g.units - 1}; got {bad[:5]}")
        if len(us) == g.units:
            branch = [c.id for c in graph.candidates("branch") if c.path == g.module]
            if not branch:
                raise PlanError(
                    f"removing all {g.units} units of {gid} would leave a zero-width layer and "
                    f"{g.module or 'its module'} is not a removable branch: keep at least one unit"
                )
            ids += [b for b in branch if b not in ids]
        elif us:
            clean[gid] = us
    base = Plan.from_graph(graph, ids, "mean" if fill == "mean" else "zeros") if ids else None
    # units inside a removed candidate go with it
    gone = [graph.candidate(i).path for i in ids]
    clean = {
        gid: us
        for gid, us in clean.items()
        if not any(within(m.param.rsplit(".", 1)[0], p) for p in gone for m in groups[gid].members)
    }
    slices, attrs = slices_for(graph.model, list(groups), clean)
    params, macs = groups.savings(clean)
    plan = Plan(
        removals=(),
        replacements=(),
        fingerprint=graph.fingerprint,
        model_class=type(graph.model).__name__,
        params_before=graph.total_params,
        params_removed=params,
        flops_before=graph.total_flops,
        flops_removed=2 * macs,
        units=tuple(
            Units(gid, groups[gid].kind, tuple(us), groups[gid].units) for gid, us in clean.items()
        ),
        slices=tuple(Slice(n, d, tuple(k)) for n, d, k in slices),
        attrs=tuple(Attr(m, a, v) for m, a, v in attrs),
        compensation="none" if fill == "zeros" else fill,
        consumers=tuple(
            dict.fromkeys(
                m.param for gid in clean for m in groups[gid].members if m.role == "consumer"
            )
        ),
    )
    if base is None:
        return plan
    return replace(
        plan,
        removals=base.removals,
        replacements=base.replacements,
        params_removed=plan.params_removed + base.params_removed,
        flops_removed=plan.flops_removed + base.flops_removed,
    )
