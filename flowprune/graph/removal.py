"""What a set of removals really removes: stubs, dead modules, saved parameters and FLOPs.

A removed branch becomes a zero stub; a removed layer becomes identity (or is deleted from its HF
stack).  Modules whose outputs then reach the model output only through removed parts are dead and are
replaced by zero stubs too.  Liveness is reachability of the ``output`` vertex in the graph with removed
vertices cut out and, for identity removals, the layer's input wired straight to its consumers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import networkx as nx

if TYPE_CHECKING:
    from .flowgraph import Candidate, FlowGraph


FILLS = ("zeros", "mean", "linear")


@dataclass(frozen=True)
class Replacement:
    """One module to swap: ``mode`` is ``zeros`` (stub returning zeros), ``mean``/``linear`` (a removed
    branch with a compensation fill), ``identity`` or ``delete``.  ``out_index``: the output tensor a fill
    applies to; ``shape``: the fill's shape (mean) or ``[in_features, out_features]`` (linear)."""

    path: str
    mode: str
    structure: dict | None = None
    out_index: int = 0
    shape: list | None = None


@dataclass(frozen=True)
class Effect:
    replacements: tuple[Replacement, ...]
    params: int
    flops: int


def within(path: str, root: str) -> bool:
    """True if module ``path`` is ``root`` or inside it."""
    return root == "" or path == root or path.startswith(root + ".")


def _fill_replacement(graph: "FlowGraph", c: "Candidate", fill: str) -> Replacement:
    rec = graph.call(c.cid)
    if fill == "zeros":
        return Replacement(c.path, "zeros", rec.structure, c.out_index)
    leaf = _tensor_leaf(rec.structure, c.out_index)
    # sizes: a dim bound to the input ("in:d") has the input's size
    sizes = [rec.in_shape[int(d[3:])] if isinstance(d, str) else d for d in leaf["shape"]] if rec.in_shape else []
    if fill == "mean":  # one value per feature (last dim; channels for [B, C, H, W]), averaged over the rest
        feat = 1 if len(sizes) >= 4 else len(sizes) - 1
        return Replacement(c.path, "mean", rec.structure, c.out_index,
                           [int(n) if d == feat else 1 for d, n in enumerate(sizes)])
    if not sizes or len(sizes) != len(rec.in_shape) or list(rec.in_shape[:-1]) != sizes[:-1]:
        raise ValueError(f"fill='linear' maps features on the last dim; {c.id} maps {rec.in_shape} to {sizes}")
    return Replacement(c.path, "linear", rec.structure, c.out_index, [int(rec.in_shape[-1]), int(sizes[-1])])


def _tensor_leaf(structure: dict, index: int) -> dict:
    leaves: list[dict] = []

    def walk(s: dict) -> None:
        if s["t"] in ("tensor", "input"):
            leaves.append(s)
        for v in (s.get("items") or []) if s["t"] in ("tuple", "list") else (s.get("items") or {}).values():
            walk(v)

    walk(structure)
    return leaves[index]


def effect(graph: "FlowGraph", removals: Iterable["Candidate"], fill: str = "zeros") -> Effect:
    """Replacements, parameters and FLOPs saved by removing ``removals`` together; removed branches get
    the compensation ``fill`` (a linear fill keeps the branch input alive and costs its own parameters)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    layers = [c for c in removals if c.kind == "layer"]
    chosen = [c for c in removals if not any(within(c.path, l.path) and c.path != l.path for l in layers)]
    reps: list[Replacement] = []
    for c in chosen:
        if c.kind == "layer":
            reps.append(Replacement(c.path, "delete" if c.deletable else "identity",
                                    None if c.deletable else graph.call(c.cid).identity_structure))
        else:
            reps.append(_fill_replacement(graph, c, fill))
    removed_paths = [r.path for r in reps]
    G = graph.nx
    zero_paths = [r.path for r in reps if r.mode in ("zeros", "mean")]
    layer_paths = [r.path for r in reps if r.mode not in ("zeros", "mean")]  # pass their input on
    # A removed layer still passes its input on: contract its vertices into one node (conservative:
    # its side inputs stay live).  A zero stub passes nothing: its vertices go.
    merge_into = {}
    killed = set()
    for v, d in G.nodes(data=True):
        if "cid" not in d:
            continue
        owner = graph.owner_path(v)
        if any(within(owner, p) for p in zero_paths):
            killed.add(v)
        for p in layer_paths:
            if within(owner, p):
                merge_into[v] = f"removed:{p}"
    H = nx.relabel_nodes(G.subgraph(set(G) - killed), merge_into, copy=True)
    live = nx.ancestors(H, "output") | {"output"}
    live0 = graph.live
    dead_paths = _dead_modules(graph, live, live0, removed_paths)
    reps += [Replacement(p, "zeros", graph.calls_of(p)[0].structure) for p in dead_paths]
    all_paths = [r.path for r in reps]
    added = sum(r.shape[0] * r.shape[1] + r.shape[1] for r in reps if r.mode == "linear")
    added_flops = sum(2 * r.shape[0] * r.shape[1] * math.prod(graph.calls_of(r.path)[0].in_shape[:-1])
                      for r in reps if r.mode == "linear")
    return Effect(tuple(reps), graph.params_within(all_paths) - added,
                  sum(graph.flops_of(p) for p in all_paths) - added_flops)


def _dead_modules(graph: "FlowGraph", live: set, live0: set, removed: list[str]) -> list[str]:
    # A module is dead when none of its calls has a live consumer or a live vertex inside; only the
    # outermost dead modules that hold parameters are replaced.
    dead: list[str] = []
    for path in graph.module_paths_by_depth():
        if any(within(path, r) for r in removed + dead):
            continue
        calls = graph.calls_of(path)
        if not calls or any(c.structure is None for c in calls) or graph.params_within([path]) == 0:
            continue
        if len({repr(c.structure) for c in calls}) > 1:
            continue  # called with different output structures: one stub cannot stand for all calls
        inside = graph.vertices_within(path)
        consumers = set().union(*(graph.consumers.get(c.cid, set()) for c in calls))
        was_live = bool((consumers | inside) & live0)
        if was_live and not ((consumers | inside) & live):
            dead.append(path)
    return dead
