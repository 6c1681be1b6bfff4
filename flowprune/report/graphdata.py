"""The flow graph as report data: vertices with their flow and the candidate whose removal removes them,
edges with the flow along them.  Plain JSON, so a report read back can still be drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..graph import Candidate, FlowGraph


def graph_data(
    graph: "FlowGraph", cands: Sequence["Candidate"], graph_flow: dict | None = None
) -> dict:
    """{"nodes": [{id, kind, path, flops, flow, candidate}], "edges": [[u, v, flow]]}; ``flow`` is None
    without the flow analysis.  ``candidate``: the smallest candidate (branches before layers) whose
    removal removes the vertex (its stub or a module that dies with it), else None.

    >>> data = graph_data(graph, eng.candidates, flows)  # flows filled by information_flow
    """
    G = graph.nx
    vflow = (graph_flow or {}).get("vertices", {})
    eflow = (graph_flow or {}).get("edges", {})
    # vertex -> ((branch first, size), candidate id)
    owner: dict[str, tuple[tuple[int, int], str]] = {}
    for c in cands:
        reps = graph.effect([c.id]).replacements
        paths = [r.path for r in reps if r.calls is None or r.every_call]
        verts = set().union(*(graph.vertices_within(p) for p in paths)) if paths else set()
        if any(
            r.calls is not None and not r.every_call for r in reps
        ):  # one call of a shared module
            calls = graph.subtree(c.cid)
            verts |= {v for v, d in graph.nx.nodes(data=True) if d.get("cid") in calls}
        key = (0 if c.kind == "branch" else 1, len(verts))
        for v in verts:
            if v not in owner or key < owner[v][0]:
                owner[v] = (key, c.id)
    nodes = []
    for v, d in G.nodes(data=True):
        nodes.append(
            {
                "id": v,
                "kind": d.get("kind", ""),
                "path": graph.owner_path(v) if "cid" in d else "",
                "flops": int(d.get("flops", 0) or 0),
                "flow": vflow.get(v),
                "candidate": owner[v][1] if v in owner else None,
            }
        )
    edges = [[u, v, eflow.get((u, v))] for u, v in G.edges]
    return {"nodes": nodes, "edges": edges}
