"""Find removable edges (residual branches, concat inputs) and vertices (layers/blocks) in a FlowGraph.

Branch: a term t of an add (nested adds whose only consumer is the outer add are flattened, so the
parallel attention+MLP of Falcon gives two branches), or an input t of a concat (DenseNet's
``cat([x, f(x)])``: removal leaves zeros in t's channels), such that
  * t is exactly the output of one module call (the *gate* module's call),
  * that output is consumed only by this add,
  * another term s of the sum is an ancestor of t (t = f(s): s is the skip, t the branch).
Layer: a module call (of a module with parameters) whose primary output has the shape and dtype of its
primary input, that is a residual block (an add inside it takes the block input as a term) or an element
of an ``nn.Sequential``/``nn.ModuleList``, and that is neither a branch nor dead when a branch is removed
nor a lone normalisation module.
Shared modules: a module called several times in one forward (shared weights) is judged call by call;
each call that passes gives a per-call candidate ``"<path>:<kind>@<k>"`` (k: the call's index in the
forward, from 0), so a residual branch inside an ALBERT layer gives one branch per layer call too.  Only
when every call returns the same output structure (one stub must stand for any of them); a module
called once keeps its id ``"<path>:<kind>"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import networkx as nx
from torch import nn

from ..adapters import is_norm, is_stub, layer_stacks
from .recorder import MergeRecord, Operand, indexed_inputs
from .removal import effect, within

if TYPE_CHECKING:
    from .flowgraph import FlowGraph


@dataclass(frozen=True)
class Candidate:
    """A removable edge (``kind="branch"``: a residual branch, removal = zeros) or vertex
    (``kind="layer"``: a block whose output has its input's shape, removal = identity).

    ``id`` is ``"<module path>:<kind>"``; ``path`` is the gated module; ``params``/``flops`` are what
    the rewrite saves when this candidate alone is removed.  A module called several times in one
    forward (shared weights, ALBERT's ``for i in range(n): x = self.layer(x)``) gives one candidate per
    call: ``"<module path>:<kind>@<k>"`` with ``call=k``, the k-th call (from 0) in the forward; removing
    it skips that call only (it saves its FLOPs, and the module's parameters once every call is gone).

    >>> Candidate("encoder.layer:layer@2", "layer", "encoder.layer", call=2).call
    2
    """

    id: str
    kind: str
    path: str
    params: int = 0
    flops: int = 0
    merge: str | None = None  # branch: the merge vertex the branch's output enters
    operand: int | None = None  # branch: position of the branch output among that merge's operands
    out_index: int = 0  # which tensor of the module's output is gated
    deletable: bool = False  # layer: can be deleted from a Hugging Face layer stack
    # index of the gated call in graph.calls
    cid: int = field(default=-1, repr=False, compare=False)
    call: int | None = None  # the gated call of a module called several times (None: called once)
    # (start, end) of that call
    span: tuple[int, int] | None = field(default=None, repr=False, compare=False)


def call_id(path: str, kind: str, call: int | None = None) -> str:
    """A candidate id: ``"path:kind"`` for a module called once, ``"path:kind@k"`` for its k-th call."""
    return f"{path}:{kind}" if call is None else f"{path}:{kind}@{call}"


def _terms(graph: "FlowGraph", m: MergeRecord, by_vid: dict) -> list[tuple[Operand, str, int]]:
    """Operands of add ``m`` with single-consumer inner adds expanded: (operand, merge it enters, position)."""
    out = []
    for i, op in enumerate(m.operands):
        inner = (
            by_vid.get(next(iter(op.producers)))
            if len(op.producers) == 1 and op.origin is None
            else None
        )
        if (
            inner is not None
            and inner.kind == "add"
            and set(graph.nx.successors(inner.vid)) == {m.vid}
        ):
            out += _terms(graph, inner, by_vid)
        else:
            out.append((op, m.vid, i))
    return out


def _module_calls(graph: "FlowGraph") -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in graph.calls:
        counts[c.path] = counts.get(c.path, 0) + 1
    return counts


def _same_structures(calls: list) -> bool:
    return len({(repr(c.structure), repr(c.identity_structure)) for c in calls}) == 1


def find_candidates(graph: "FlowGraph") -> list["Candidate"]:
    """Every branch and layer candidate of ``graph``, in forward order, with the exact parameters and
    FLOPs its removal saves."""
    callable_once_or_each, index = _call_rules(graph)
    branches = _branches(graph, callable_once_or_each, index)
    effects = {cid: effect(graph, [c]) for cid, c in branches.items()}
    cands = [
        replace(c, params=effects[cid].params, flops=effects[cid].flops)
        for cid, c in branches.items()
    ]
    regions = [r.path for e in effects.values() for r in e.replacements]
    layers = _layers(graph, callable_once_or_each, index, regions)
    order = {c.cid: i for i, c in enumerate(graph.calls)}
    return sorted(cands + layers, key=lambda c: (order[c.cid], c.kind))


def _call_rules(graph: "FlowGraph"):
    """(whether a call may be a candidate, the call index a per-call candidate carries or None)."""
    ncalls = _module_calls(graph)
    # what flowprune already put in (stubs of an earlier plan) is never offered for removal again
    stubs = [n for n, m in graph.model.named_modules() if is_stub(m)]
    for path in [p for p in ncalls if any(within(p, s) for s in stubs)]:
        ncalls[path] = 0
    # a module called several times gives one candidate per call when one stub can stand for any call
    # (the same output structure every time); calls an earlier plan already skips are not offered again
    per_call = {p for p, n in ncalls.items() if n > 1 and _same_structures(graph.calls_of(p))}
    skipped = {
        (n, k)
        for n, m in graph.model.named_modules()
        for k in getattr(vars(m).get("forward"), "flowprune_skipped", ())
    }

    def callable_once_or_each(rec) -> bool:
        n = ncalls[rec.path]
        return n == 1 or (rec.path in per_call and (rec.path, rec.k) not in skipped)

    def index(rec) -> int | None:
        return rec.k if ncalls[rec.path] > 1 else None

    return callable_once_or_each, index


def _branches(graph: "FlowGraph", callable_once_or_each, index) -> dict[int, "Candidate"]:
    """Branch candidates by call index: a merge term that is one module call's output, consumed only
    by that merge, with another term among its ancestors."""
    G = graph.nx
    by_vid = {m.vid: m for m in graph.merges}
    anc_cache: dict[str, set] = {}

    def ancestors(vs: frozenset) -> set:
        out: set = set()
        for v in vs:
            if v not in anc_cache:
                anc_cache[v] = nx.ancestors(G, v)
            out |= anc_cache[v]
        return out

    branches: dict[int, Candidate] = {}
    for m in graph.merges:
        if m.kind not in ("add", "cat"):
            continue
        # a concat's inputs are its terms as they are (no flattening: positions are channel slices)
        terms = (
            _terms(graph, m, by_vid)
            if m.kind == "add"
            else [(op, m.vid, i) for i, op in enumerate(m.operands)]
        )
        for j, (op, enters, pos) in enumerate(terms):
            if op.origin is None:
                continue
            cid, leaf_idx = op.origin
            rec = graph.call(cid)
            if (
                cid == 0
                or cid in branches
                or not callable_once_or_each(rec)
                or rec.structure is None
            ):
                continue
            if graph.consumers.get(cid, set()) != {enters}:
                continue
            anc = ancestors(op.producers)
            if not any(s.producers & anc for k, (s, _, _) in enumerate(terms) if k != j):
                continue
            branches[cid] = Candidate(
                id=call_id(rec.path, "branch", index(rec)),
                kind="branch",
                path=rec.path,
                merge=enters,
                operand=pos,
                out_index=leaf_idx,
                cid=cid,
                call=index(rec),
                span=(rec.start, rec.end),
            )
    return branches


def _layers(
    graph: "FlowGraph", callable_once_or_each, index, regions: list[str]
) -> list["Candidate"]:
    """Layer candidates: shape-preserving calls with parameters, residual or in a container, outside
    every branch's removal region and not a lone normalisation."""
    modules = dict(graph.model.named_modules())
    parents = {
        name: modules[name.rsplit(".", 1)[0] if "." in name else ""] for name in modules if name
    }
    stacks = set(layer_stacks(graph.model))
    adds_by_cid: dict[int, list[MergeRecord]] = {}
    for m in graph.merges:
        if m.kind == "add":
            adds_by_cid.setdefault(m.cid, []).append(m)
    layers = []
    for rec in graph.calls[1:]:
        if not callable_once_or_each(rec) or rec.identity_structure is None or rec.in_shape is None:
            continue
        if (
            rec.in_shape != rec.out_shape
            or rec.in_dtype != rec.out_dtype
            or not rec.out_dtype.is_floating_point
        ):
            continue
        owners = (
            [rec.path] if index(rec) is None else graph.aliases(rec.path)
        )  # a list may hold it twice
        if any(within(rec.path, r) for r in regions) or graph.params_within(owners) == 0:
            continue
        if rec.leaf and is_norm(graph.model.get_submodule(rec.path), graph.model):
            continue  # a lone normalisation is not a layer anyone means to drop (its removal rescales)
        parent = parents.get(rec.path)
        in_container = isinstance(parent, (nn.Sequential, nn.ModuleList))
        inside = [c for c in graph.calls if within(c.path, rec.path)]
        residual = any(
            op.producers == rec.in_producers
            for c in inside
            for m in adds_by_cid.get(c.cid, [])
            for op in m.operands
        )
        if not (residual or in_container):
            continue
        parent_path = rec.path.rsplit(".", 1)[0] if "." in rec.path else ""
        c = Candidate(
            id=call_id(rec.path, "layer", index(rec)),
            kind="layer",
            path=rec.path,
            cid=rec.cid,
            deletable=index(rec) is None
            and parent_path in stacks
            and isinstance(parent, nn.ModuleList)
            and not rec.side_consumed  # its successor would compute them anew: an identity stub
            and not indexed_inputs(
                [
                    s
                    for s in graph.calls
                    if s.parent == rec.parent and s.path.rpartition(".")[0] == parent_path
                ]
            ),
            call=index(rec),
            span=(rec.start, rec.end),
        )
        e = effect(graph, [c])
        layers.append(replace(c, params=e.params, flops=e.flops))
    return layers
