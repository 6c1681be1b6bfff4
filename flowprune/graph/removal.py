"""What a set of removals really removes: stubs, dead modules, saved parameters and FLOPs.

A removed branch becomes a zero stub; a removed layer becomes identity (or is deleted from its HF
stack).  Modules whose outputs then reach the model output only through removed parts are dead and are
replaced by zero stubs too.  Liveness is reachability of the ``output`` vertex in the graph with removed
vertices cut out and, for identity removals, the layer's input wired straight to its consumers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import networkx as nx
from torch import nn

from ..errors import PlanError
from ..plan import Replacement

if TYPE_CHECKING:
    from .candidates import Candidate
    from .flowgraph import FlowGraph


FILLS = ("zeros", "mean", "linear")


@dataclass(frozen=True)
class Effect:
    replacements: tuple[Replacement, ...]
    params: int  # net: saved minus what linear fills add (negative when the fills add more)
    flops: int
    fill_params: int = 0  # parameters the linear fills add (included in ``params``)


def within(path: str, root: str) -> bool:
    """True if module ``path`` is ``root`` or inside it."""
    return root == "" or path == root or path.startswith(root + ".")


def encloses(outer: "Candidate", inner: "Candidate") -> bool:
    """True if ``inner``'s gated call runs inside ``outer``'s (or is it): the calls must nest (for modules
    held and called once this is module nesting); module nesting when a span is unknown."""
    if outer.span is None or inner.span is None:
        return within(inner.path, outer.path)
    # spans even between modules called once: a module that two blocks hold runs where it is called
    # (removing the block that holds it first does not remove it from the other)
    return outer.span[0] <= inner.span[0] and inner.span[1] <= outer.span[1]


# module types whose tensors hold channels on dim 1 ([B, C, *spatial]) or on the last dim ([B, T, D])
CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
CHANNEL_LAST: tuple[type, ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
)


def _layout(m: nn.Module) -> str | None:
    """ "first", "last" or None (unknown) for one module, from its type."""
    if isinstance(m, CHANNEL_FIRST):
        return "first"
    name = type(m).__name__
    if (
        isinstance(m, CHANNEL_LAST)
        or name == "Conv1D"
        or name.endswith(("RMSNorm", "LayerNorm", "Attention"))
    ):
        return "last"  # Conv1D: GPT-2's transposed Linear
    return None


def channel_dim(module: nn.Module | None, rank: int) -> int | None:
    """The channel dim of ``module``'s output of ``rank`` dims, or None when it cannot be told.

    From the module type (Conv/BatchNorm/GroupNorm -> 1; Linear/LayerNorm/attention -> last), else from
    the types of the parameterised modules inside it when they agree, else from the shape: [B, D] ->
    1, rank >= 4 -> 1 ([B, C, H, W]); a rank-3 tensor is [B, T, D] or [B, C, L]: unknown.

    >>> channel_dim(nn.Conv1d(4, 4, 1), 3), channel_dim(nn.Linear(4, 4), 3), channel_dim(nn.ReLU(), 3)
    (1, 2, None)
    """
    if rank <= 2:
        return rank - 1
    kinds = set()
    if module is not None:
        own = _layout(module)
        kinds = (
            {own}
            if own
            else {
                _layout(m)
                for m in module.modules()
                if next(m.parameters(recurse=False), None) is not None
            }
            - {None}
        )
    if len(kinds) == 1:
        return 1 if kinds == {"first"} else rank - 1
    return 1 if rank >= 4 else None


def _fill_replacement(graph: "FlowGraph", c: "Candidate", fill: str) -> Replacement:
    rec = graph.call(c.cid)
    if fill == "zeros":
        return Replacement(c.path, "zeros", rec.structure, c.out_index)
    if c.call is not None:  # one fitted value would stand for every call of a shared module
        raise PlanError(
            f"fill={fill!r} is not supported for {c.id}, one call of a module called several "
            f"times per forward; use fill='zeros' (or leave {c.id} out of the plan)"
        )
    leaf = _tensor_leaf(rec.structure, c.out_index)
    # sizes: a dim bound to the input ("in:d") has the input's size
    sizes = (
        [rec.in_shape[int(d[3:])] if isinstance(d, str) else d for d in leaf["shape"]]
        if rec.in_shape
        else []
    )
    module = dict(graph.model.named_modules()).get(c.path)
    feat = channel_dim(module, len(sizes)) if sizes else None
    if (
        fill == "mean"
    ):  # one value per channel (dim 1 of [B, C, H, W], last of [B, T, D]), averaged over the rest
        feat = len(sizes) - 1 if feat is None else feat
        return Replacement(
            c.path,
            "mean",
            rec.structure,
            c.out_index,
            [int(n) if d == feat else 1 for d, n in enumerate(sizes)],
        )
    what = f"{c.id} ({type(module).__name__})"
    hint = f"; use fill='mean' or fill='zeros' (or leave {c.id} out of the plan)"
    if not sizes or len(sizes) != len(rec.in_shape):
        raise PlanError(
            f"fill='linear' cannot be fitted for branch {what}: it maps an input of shape "
            f"{rec.in_shape} to an output of shape {sizes or 'unknown'}" + hint
        )
    if feat is None:
        raise PlanError(
            f"fill='linear' cannot be fitted for branch {what}: its channel dim cannot be told "
            f"from the module type or the shape {list(sizes)} ([B, T, D] or [B, C, L]?)" + hint
        )
    rest_in = [n for d, n in enumerate(rec.in_shape) if d != feat]
    rest_out = [n for d, n in enumerate(sizes) if d != feat]
    if list(rest_in) != list(rest_out):  # strided, pooled, upsampled: no position-wise map
        raise PlanError(
            f"fill='linear' cannot be fitted for branch {what}: outside the channel dim {feat} its "
            f"input {list(rec.in_shape)} and output {list(sizes)} differ (stride, pooling?)" + hint
        )
    dim = -1 if feat == len(sizes) - 1 else feat
    return Replacement(
        c.path,
        "linear",
        rec.structure,
        c.out_index,
        [int(rec.in_shape[feat]), int(sizes[feat]), dim],
    )


def linear_fill_positions(shape: Sequence[int], dim: int) -> int:
    """Positions a linear fill maps independently: the product of the input's dims except ``dim``."""
    return math.prod(n for d, n in enumerate(shape) if d != dim % len(shape))


def _tensor_leaf(structure: dict, index: int) -> dict:
    leaves: list[dict] = []

    def walk(s: dict) -> None:
        if s["t"] in ("tensor", "input"):
            leaves.append(s)
        for v in (
            (s.get("items") or [])
            if s["t"] in ("tuple", "list")
            else (s.get("items") or {}).values()
        ):
            walk(v)

    walk(structure)
    return leaves[index]


def effect(graph: "FlowGraph", removals: Iterable["Candidate"], fill: str = "zeros") -> Effect:
    """Replacements, parameters and FLOPs saved by removing ``removals`` together; removed branches get
    the compensation ``fill`` (a linear fill keeps the branch input alive and costs its own parameters)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    removals = list(removals)
    layers = [c for c in removals if c.kind == "layer"]
    # a candidate inside a removed layer goes with it (per-call: inside that very call)
    chosen = [
        c for c in removals if not any(c.path != lay.path and encloses(lay, c) for lay in layers)
    ]
    per_call = [c for c in chosen if c.call is not None]
    reps: list[Replacement] = []
    for c in chosen:
        if c.call is not None:
            if c.kind == "branch":
                _fill_replacement(graph, c, fill)  # raises for a fill other than zeros
            continue
        if c.kind == "layer":
            reps.append(
                Replacement(
                    c.path,
                    "delete" if c.deletable else "identity",
                    None if c.deletable else graph.call(c.cid).identity_structure,
                )
            )
        else:
            reps.append(_fill_replacement(graph, c, fill))
    removed_paths = [r.path for r in reps] + [c.path for c in per_call]
    G = graph.nx
    zero_paths = [r.path for r in reps if r.mode in ("zeros", "mean")]
    layer_paths = [r.path for r in reps if r.mode not in ("zeros", "mean")]  # pass their input on
    # per-call removals act on the calls made while the removed call ran, not on the whole module
    call_zero = {x for c in per_call if c.kind == "branch" for x in graph.subtree(c.cid)}
    call_layer = {
        x: f"removed:{graph.call(c.cid).key}"
        for c in per_call
        if c.kind == "layer"
        for x in graph.subtree(c.cid)
    }
    # A removed layer still passes its input on: contract its vertices into one node (conservative:
    # its side inputs stay live).  A zero stub passes nothing: its vertices go.
    # Membership by call, not by name: a module shared by two parents (Flaubert's one activation object
    # in every FFN, registered under ffns.0) runs inside ffns.1 too, and goes on running there.
    merge_into = {}
    killed = set()
    zero_calls = {x for p in zero_paths for c in graph.calls_of(p) for x in graph.subtree(c.cid)}
    layer_calls = {
        x: f"removed:{p}"
        for p in layer_paths
        for c in graph.calls_of(p)
        for x in graph.subtree(c.cid)
    }
    for v, d in G.nodes(data=True):
        if "cid" not in d:
            continue
        if d["cid"] in zero_calls or d["cid"] in call_zero:
            killed.add(v)
        if d["cid"] in layer_calls:
            merge_into[v] = layer_calls[d["cid"]]
        if d["cid"] in call_layer:
            merge_into[v] = call_layer[d["cid"]]
    H = nx.relabel_nodes(G.subgraph(set(G) - killed), merge_into, copy=True)
    live = nx.ancestors(H, "output") | {"output"}
    # _dead_modules looks vertices up by their graph names: a contracted one is live with its layer
    # (else a wrapper whose only vertex is a removed layer, feeding another removed layer, looks dead)
    live |= {v for v, into in merge_into.items() if into in live}
    live0 = graph.live
    dead_paths = _dead_modules(graph, live, live0, removed_paths)
    reps += [Replacement(p, "zeros", graph.calls_of(p)[0].structure) for p in dead_paths]
    # calls that no longer run: every call of a replaced module, the skipped calls, and the calls of
    # shared modules that only fed removed calls (the fc1 call before a removed fc2 call)
    gone = {x.cid for r in reps for x in graph.calls_of(r.path)} | {c.cid for c in per_call}
    identity = {c.path for c in per_call if c.kind == "layer"}
    dead_calls = _dead_calls(graph, live, live0, gone, identity)
    gone |= set(dead_calls)
    skips = [(c.cid, c.kind) for c in per_call] + [(x, "branch") for x in dead_calls]
    shared = _per_call_replacements(graph, skips, gone)
    reps += shared
    # a replaced module is replaced under every name the model holds it by (see apply)
    full = [a for r in reps if r.calls is None for a in graph.aliases(r.path)] + [
        a for r in shared if r.every_call for a in graph.aliases(r.path)
    ]
    inner = set().union(*(graph.subtree(x) - {x} for x in gone)) if gone else set()
    flops = sum(
        graph.call(x).flops for x in gone - inner
    )  # outermost calls only: nothing counted twice
    linear = [
        r for r in reps if r.mode == "linear"
    ]  # shape [in, out, dim]: in*out weights + out biases
    added = sum(r.shape[0] * r.shape[1] + r.shape[1] for r in linear)
    added_flops = sum(
        2
        * r.shape[0]
        * r.shape[1]
        * linear_fill_positions(
            graph.calls_of(r.path)[0].in_shape, r.shape[2] if len(r.shape) > 2 else -1
        )
        for r in linear
    )
    return Effect(tuple(reps), graph.params_within(full) - added, flops - added_flops, added)


def _per_call_replacements(
    graph: "FlowGraph", skips: list[tuple[int, str]], gone: set[int]
) -> list[Replacement]:
    """One replacement per shared module with skipped calls (``skips``: (call id, "layer" -> identity or
    "branch" -> zeros)).  Call indices are those of the rewritten model: a call made inside another
    removed call does not happen there, so it is not counted (the inner module of a removed ALBERT layer
    call runs one time fewer)."""
    inside = set().union(*(graph.subtree(x) - {x} for x in gone)) if gone else set()
    by_path: dict[str, list[tuple[int, str]]] = {}
    for cid, kind in skips:
        by_path.setdefault(graph.call(cid).path, []).append((cid, kind))
    out = []
    for path, cs in by_path.items():
        if len({kind for _, kind in cs}) > 1:
            raise PlanError(f"{path} is removed both as a branch and as a layer in different calls")
        runs = [x.cid for x in graph.calls_of(path) if x.cid not in inside]
        skip = sorted(runs.index(cid) for cid, _ in cs if cid in runs)
        if not skip:
            continue  # every removed call sits inside another removed call
        rec = graph.call(cs[0][0])
        layer = cs[0][1] == "layer"
        out.append(
            Replacement(
                path,
                "identity" if layer else "zeros",
                rec.identity_structure if layer else rec.structure,
                0,
                calls=skip,
                ncalls=len(runs),
            )
        )
    return out


def _shared_calls(graph: "FlowGraph") -> list[tuple]:
    """(call, vertices made while it ran) for the calls of modules called several times that one stub
    could stand for (same output structure every call) and that compute something (cached)."""
    cache = graph.__dict__.get("_shared_calls")
    if cache is None:
        by_cid: dict[int, set] = {}
        for v, d in graph.nx.nodes(data=True):
            if "cid" in d:
                by_cid.setdefault(d["cid"], set()).add(v)
        cache = []
        for x in graph.calls[1:]:
            calls = graph.calls_of(x.path)
            if (
                len(calls) < 2
                or x.flops == 0
                or x.structure is None
                or len({repr(c.structure) for c in calls}) > 1
            ):
                continue
            cache.append((x, set().union(*(by_cid.get(y, set()) for y in graph.subtree(x.cid)))))
        graph.__dict__["_shared_calls"] = cache
    return cache


def _dead_calls(
    graph: "FlowGraph", live: set, live0: set, gone: set[int], keep: set[str]
) -> list[int]:
    """Calls of shared modules (not in ``keep``) whose outputs now reach the model output only through
    removed parts: they are skipped too (zeros).  Outermost calls only, in forward order."""
    covered = set().union(*(graph.subtree(x) for x in gone)) if gone else set()
    dead: list[int] = []
    for x, verts in _shared_calls(graph):
        if x.cid in covered or x.path in keep:
            continue
        near = graph.consumers.get(x.cid, set()) | verts
        if near & live0 and not near & live:
            dead.append(x.cid)
            covered |= graph.subtree(x.cid)
    return dead


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
