"""The report's figures, drawn with matplotlib's object API (no pyplot: the caller's backend and
open figures are left alone) and returned as SVG text."""

from __future__ import annotations

import io
import math
from typing import Sequence

import matplotlib
import networkx as nx
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath

KIND_COLORS = {"branch": "#4c72b0", "layer": "#dd8452"}
MERGES = ("add", "mul", "cat")


def to_svg(fig: Figure) -> str:
    """The figure as a standalone SVG document (text drawn as paths: no fonts needed to view it)."""
    buf = io.StringIO()
    with matplotlib.rc_context(
        {"svg.hashsalt": "flowprune"}
    ):  # the same report gives the same bytes
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue()


def _ranks(scores: dict[str, float]) -> dict[str, float]:
    """Score -> rank percentile in [0, 1] (0 = least important): colours that outliers cannot wash out."""
    ok = sorted((v, k) for k, v in scores.items() if v is not None and math.isfinite(v))
    n = max(len(ok) - 1, 1)
    return {k: i / n for i, (_, k) in enumerate(ok)}


def _layout(nodes: list[dict], edges: list[list]) -> dict[str, tuple[float, float]]:
    # x: topological generation (depth), y: spread of the vertices of one generation around 0
    G = nx.DiGraph()
    G.add_nodes_from(n["id"] for n in nodes)
    G.add_edges_from((u, v) for u, v, _ in edges)
    pos = {}
    for x, gen in enumerate(nx.topological_generations(G)):
        gen = sorted(gen)
        for i, v in enumerate(gen):
            pos[v] = (float(x), i - (len(gen) - 1) / 2)
    return pos


def flow_graph(graph: dict, scores: dict[str, float] | None, criterion: str) -> Figure:
    """Vertices by depth, left to right; edge width ∝ the flow along the edge (share of the output);
    vertex colour: rank of the score of the candidate whose removal removes the vertex (grey: none).
    Edges that skip vertices (residual connections) arc above the chain."""
    nodes, edges = graph["nodes"], graph["edges"]
    pos = _layout(nodes, edges)
    depth = max((x for x, _ in pos.values()), default=0) + 1
    spread = max((abs(y) for _, y in pos.values()), default=0)
    fig = Figure(figsize=(min(48.0, max(8.0, 0.16 * depth)), min(8.0, 2.6 + 0.5 * spread)))
    ax = fig.add_subplot()
    flows = [f for _, _, f in edges if f is not None]
    top = max(flows) if flows else 1.0
    paths, widths = [], []
    for u, v, f in edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        lift = 0.25 * math.sqrt(max(x1 - x0 - 1, 0))  # the longer the skip, the higher the arc
        mid = ((x0 + x1) / 2, (y0 + y1) / 2 + lift)
        paths.append(
            MplPath([(x0, y0), mid, (x1, y1)], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
        )
        widths.append(0.4 + 5.0 * (f / top if f is not None and top > 0 else 0.2))
    ax.add_collection(
        PathCollection(paths, facecolors="none", edgecolors="#8c8c8c", linewidths=widths, alpha=0.8)
    )
    rank = _ranks(scores or {})
    xs, ys, colors, sizes, markers = [], [], [], [], []
    cmap = colormaps["viridis"]
    for n in nodes:
        x, y = pos[n["id"]]
        r = rank.get(n["candidate"]) if n["candidate"] else None
        xs.append(x)
        ys.append(y)
        colors.append(cmap(r) if r is not None else (0.8, 0.8, 0.8, 1.0))
        sizes.append(18 if n["kind"] in MERGES else 34)
        markers.append("s" if n["kind"] in MERGES else "o")
    for m in ("o", "s"):
        idx = [i for i, k in enumerate(markers) if k == m]
        ax.scatter(
            [xs[i] for i in idx],
            [ys[i] for i in idx],
            s=[sizes[i] for i in idx],
            c=[colors[i] for i in idx],
            marker=m,
            edgecolors="#333333",
            linewidths=0.4,
            zorder=3,
        )
    for n in nodes:
        if n["kind"] in ("input", "output"):
            x, y = pos[n["id"]]
            ax.annotate(
                n["id"],
                (x, y),
                xytext=(0, -12),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    _label_candidates(ax, nodes, pos, -spread - 0.6)
    ax.set_xlim(-1, depth)
    ax.set_ylim(-spread - 1.6, spread + 0.8 + 0.25 * math.sqrt(depth))
    ax.axis("off")
    if rank:
        sm = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
        cb = fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01)
        cb.set_label(f"rank by {criterion} (0 = removed first)", fontsize=8)
    ax.set_title(
        f"flow graph: {len(nodes)} vertices, {len(edges)} edges; edge width = flow, colour = {criterion} rank",
        fontsize=9,
        loc="left",
    )
    return fig


def drawable(rows: list[dict], criteria: Sequence[str]) -> list[str]:
    """The criteria with at least one finite score (the others have no bars to draw)."""
    return [c for c in criteria if any(_finite(r.get(c)) for r in rows)]


def _label_candidates(ax, nodes: list[dict], pos: dict, y: float, most: int = 48) -> None:
    """Name the layers (or, without layer candidates, the branches) under the vertices they remove, so
    the graph can be read against the tables: the last two parts of the module path, e.g. "layers.5"."""
    cands = {n["candidate"] for n in nodes if n["candidate"]}

    def kind_of(c: str) -> str:  # "path:layer" or, one call of a shared module, "path:layer@2"
        return c.rsplit(":", 1)[-1].split("@")[0]

    kind = "layer" if any(kind_of(c) == "layer" for c in cands) else "branch"
    groups: dict[str, list[float]] = {}
    for c in (c for c in cands if kind_of(c) == kind):
        root = c.rsplit(":", 1)[
            0
        ]  # the vertices of the module (merges belong to their enclosing module)
        xs = [
            pos[n["id"]][0] for n in nodes if n["path"] == root or n["path"].startswith(root + ".")
        ]
        groups[c] = xs or [pos[n["id"]][0] for n in nodes if n["candidate"] == c]
    picked = sorted((c for c in groups if groups[c]), key=lambda c: min(groups[c]))
    step = max(1, math.ceil(len(picked) / most))
    for c in picked[::step]:
        name = ".".join(c.rsplit(":", 1)[0].split(".")[-2:])
        ax.text(
            sum(groups[c]) / len(groups[c]),
            y,
            name,
            ha="center",
            va="top",
            fontsize=6,
            rotation=90,
            color="#444444",
        )


def criteria_bars(rows: list[dict], criteria: Sequence[str]) -> Figure:
    """One bar chart per criterion; candidates along depth (trace order), coloured by kind."""
    crit = drawable(rows, criteria)
    if not crit:
        raise ValueError("no criterion has a finite score to draw")
    n = len(rows)
    fig = Figure(figsize=(min(30.0, max(7.0, 0.22 * n + 2)), 1.35 * len(crit) + 1.6))
    axes = fig.subplots(len(crit), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n)
    colors = [KIND_COLORS.get(r["kind"], "#999999") for r in rows]
    for ax, c in zip(axes, crit):
        ax.bar(x, [r[c] if _finite(r.get(c)) else 0.0 for r in rows], color=colors, width=0.8)
        ax.set_ylabel(c, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.axhline(0, color="#333333", lw=0.5)
    step = max(1, math.ceil(n / 60))
    axes[-1].set_xticks(
        x[::step], [rows[i]["id"] for i in range(0, n, step)], rotation=90, fontsize=6
    )
    axes[0].set_title(
        "scores along depth (blue: branches, orange: layers; higher = more important)",
        fontsize=9,
        loc="left",
    )
    fig.align_ylabels(axes)
    return fig


def agreement_heatmap(names: list[str], matrix: np.ndarray) -> Figure:
    """Spearman rank correlation between every pair of criteria."""
    k = len(names)
    fig = Figure(figsize=(1.0 + 0.55 * k, 0.6 + 0.5 * k))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    for i in range(k):
        for j in range(k):
            if np.isfinite(matrix[i, j]):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if abs(matrix[i, j]) > 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label("Spearman", fontsize=8)
    ax.set_title("agreement between criteria", fontsize=9, loc="left")
    return fig


def loss_curves(curves: list[dict], total_params: int) -> Figure:
    """ΔL against the number of removals and against the fraction of parameters removed."""
    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    for c in curves:
        label = f"{c['strategy']} / {c['criterion']}"
        style = "-" if c["strategy"] == "one_shot" else "--"
        a.plot(c["k"], c["loss"], style, marker="o", ms=3, label=label)
        b.plot(
            [p / max(total_params, 1) for p in c["params_removed"]],
            c["loss"],
            style,
            marker="o",
            ms=3,
            label=label,
        )
    a.set_xlabel("removals")
    b.set_xlabel("fraction of parameters removed")
    for ax in (a, b):
        ax.set_ylabel("ΔL (calibration)")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    a.set_title("loss against removals, per strategy and criterion", fontsize=9, loc="left")
    return fig


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
