"""Information flow from one forward pass over the calibration data (streaming statistics).

For a branch z entering a merge with output y (the other terms sum to y − z):
  energy     ‖z‖² / ‖y‖²
  proximity  max(0, ‖y‖₁ − ‖y − z‖₁) / Σ over the merge's inputs of the same
  llmdrop    1 − cos(y − z, y)         (LLM-Drop: 1 − cos(x, x + f(x)))
  angular    arccos(cos(y − z, y)) / π
For a layer with input x and output y, the same with z = y − x; ``shortgpt`` is ShortGPT's block
influence 1 − cos(x, y) of the layer (for a branch: of the layer candidate that contains it).
``flow`` propagates the local energy shares backwards along the DAG from the output (networkx): each
vertex's share of what reaches the output; a branch gets its merge's share times its local share.
Cosines are per token for [B, T, D] tensors and per sample otherwise.  Every sum is streamed, so memory
does not grow with the number of batches.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import torch
from tqdm.auto import tqdm

from ..graph.removal import encloses
from ..graph.tap import Tap
from ..score.engine import Engine, _clone


def _rows(a: torch.Tensor) -> torch.Tensor:
    # [B, T, D] -> tokens [B·T, D]; anything else -> samples [B, -1]
    return a.flatten(0, 1) if a.dim() == 3 else (a.flatten(1) if a.dim() > 1 else a[None])


class _Stats:
    """Streaming sums for one merge (all operands) or one layer (operands: skip x, update y − x).
    Cosines and angles only for the ``focus`` operands (the candidates'); the rest only feed shares."""

    def __init__(self, focus: set[int] = frozenset()) -> None:
        self.focus = set(focus)
        self.sq: dict[int, float] = defaultdict(float)  # Σ‖z_i‖²
        self.l1_rest: dict[int, float] = defaultdict(float)  # Σ‖y − z_i‖₁
        self.cos: dict[int, float] = defaultdict(float)  # Σ cos(y − z_i, y)
        self.ang: dict[int, float] = defaultdict(float)  # Σ angle(y − z_i, y) / π
        self.count: dict[int, int] = defaultdict(int)
        self.y_sq = 0.0
        self.y_l1 = 0.0

    def update(self, ops: list[torch.Tensor], y: torch.Tensor) -> None:
        y = y.float()
        self.y_sq += float(y.pow(2).sum())
        if not self.focus:  # a merge on the way: only the energy shares of its inputs
            for i, z in enumerate(ops):
                self.sq[i] += float(z.float().pow(2).sum())
            return
        y_l1 = float(y.abs().sum())
        self.y_l1 += y_l1
        yr = _rows(y)
        y_norm = yr.norm(dim=1)
        ops = [z.float() for z in ops]
        # y − z_i: for two same-shape terms it is the other term (no subtraction, no new tensor)
        pair = len(ops) == 2 and all(z.shape == y.shape for z in ops)
        for i, z in enumerate(ops):
            self.sq[i] += float(z.pow(2).sum())
            if z.shape != y.shape:  # a concat input
                # y − z_i is y with z_i's slice zeroed, orthogonal to z_i: ‖y − z‖₁ = ‖y‖₁ − ‖z‖₁ and
                # cos(y − z, y) = √(‖y‖² − ‖z‖²)/‖y‖ per row, without building y − z
                self.l1_rest[i] += y_l1 - float(z.abs().sum())
                if i in self.focus:
                    zr, yr_i, yn = _rows(z), yr, y_norm
                    if (
                        zr.shape[0] != yr.shape[0]
                    ):  # not concatenated within tokens (e.g. [B, C, L] along C)
                        zr, yr_i = (
                            z.flatten(1),
                            y.flatten(1),
                        )  # per sample: exact if joined within samples
                        yn = yr_i.norm(dim=1)
                    if zr.shape[0] != yr_i.shape[0]:
                        continue  # joined across samples: only its energy share and proximity are defined
                    cos = (
                        (yn.pow(2) - zr.pow(2).sum(1)).clamp_min(0).sqrt() / yn.clamp_min(1e-30)
                    ).clamp(0, 1)
                    self._angles(i, zr, cos)
                continue
            rest = _rows(ops[1 - i] if pair else y - z)
            self.l1_rest[i] += float(rest.abs().sum())
            if i not in self.focus:
                continue
            r_norm = rest.norm(dim=1)
            cos = ((rest * yr).sum(1) / (r_norm * y_norm).clamp_min(1e-30)).clamp(-1, 1)
            self._angles(i, _rows(z), cos)

    def _angles(self, i: int, zr: torch.Tensor, cos: torch.Tensor) -> None:
        """Accumulate cos(y − z_i, y) [rows] and its angle; ``zr``: z_i as [rows, features]."""
        # arccos amplifies rounding near cos = 1: rows where z vanishes have angle exactly 0
        angle = torch.where(zr.abs().amax(1) == 0, 0.0, torch.arccos(cos.double()).float())
        self.cos[i] += float(cos.sum())
        self.ang[i] += float(angle.sum() / torch.pi)
        self.count[i] += cos.numel()

    def local(self, i: int) -> dict[str, float]:
        prox = {j: max(0.0, self.y_l1 - self.l1_rest[j]) for j in self.sq}
        n = max(self.count[i], 1)
        return {
            "energy": self.sq[i] / max(self.y_sq, 1e-30),
            "proximity": prox[i] / max(sum(prox.values()), 1e-30),
            "llmdrop": 1 - self.cos[i] / n,
            "angular": self.ang[i] / n,
        }

    def shares(self) -> list[float]:
        tot = sum(self.sq.values())
        return [self.sq[i] / tot if tot > 0 else 1 / len(self.sq) for i in sorted(self.sq)]


def information_flow(eng: Engine, graph_flow: dict | None = None) -> dict[str, dict[str, float]]:
    """One forward over the calibration batches (with every α = 1; it also records the reference
    outputs) -> {candidate id: {criterion: value}} for flow, energy, proximity, llmdrop, angular, shortgpt.
    ``graph_flow``, if given, receives the propagated flow of every vertex (``"vertices"``: {vertex:
    share}) and edge (``"edges"``: {(u, v): share}); the shares entering ``output`` sum to 1."""
    g = eng.graph
    merges = {(g.call(m.cid).key, m.raw_index): m for m in g.merges if m.kind in ("add", "cat")}
    layers = {g.call(c.cid).key: c for c in eng.candidates if c.kind == "layer"}
    focus: dict[str, set[int]] = defaultdict(set)
    for c in eng.candidates:
        if c.kind == "branch":
            focus[c.merge].add(c.operand)
    mstats = {m.vid: _Stats(focus.get(m.vid, set())) for m in merges.values()}
    lstats = {c.id: _Stats({1}) for c in layers.values()}
    tap = Tap(
        eng.model,
        merges=set(merges),
        calls=set(layers),
        on_merge=lambda key, ops, y: mstats[merges[key].vid].update(ops, y),
        on_call=lambda key, x, y: lstats[layers[key].id].update([x, y - x], y),
    )
    refs = []
    with eng.alphas(torch.ones(len(eng.candidates))), torch.no_grad(), tap:
        for i in tqdm(
            range(len(eng.batches)), desc="information flow", disable=not eng.progress, leave=False
        ):
            refs.append(_clone(eng.run(i)))
    if not eng.refs:
        eng.refs = refs
    flow, weights = _propagate(
        g, {vid: s.shares() for vid, s in mstats.items() if s.sq}
    )  # unobserved: equal split
    if graph_flow is not None:
        graph_flow["vertices"] = flow
        graph_flow["edges"] = {(u, v): flow[v] * w for (u, v), w in weights.items()}
    out: dict[str, dict[str, float]] = {}
    for c in eng.candidates:
        if c.kind == "branch" and c.merge in mstats and mstats[c.merge].sq:
            st = mstats[c.merge]
            out[c.id] = {
                **st.local(c.operand),
                "flow": flow.get(c.merge, 0.0) * st.shares()[c.operand],
            }
        elif c.kind == "layer" and c.id in lstats:
            out[c.id] = {**lstats[c.id].local(1), "flow": 0.0}
    for c in eng.candidates:  # a layer carries the flow of its branches, or all of its output's
        if c.kind == "layer" and c.id in out:
            inner = [
                out[b.id]["flow"]
                for b in eng.candidates
                if b.kind == "branch" and encloses(c, b) and b.id in out
            ]
            out[c.id]["flow"] = (
                sum(inner) if inner else sum(flow.get(v, 0.0) for v in g.call(c.cid).out_producers)
            )
    for c in eng.candidates:
        if c.id not in out:
            continue
        enclosing = [
            lay
            for lay in eng.candidates
            if lay.kind == "layer" and encloses(lay, c) and lay.id in out
        ]
        host = max(enclosing, key=lambda lay: len(lay.path)) if enclosing else c
        out[c.id]["shortgpt"] = out[host.id]["llmdrop"]
    return out


def _propagate(
    g, shares: dict[str, list[float]]
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Share of the output reaching each vertex: merges split by their operands' energy shares, mul
    merges and other vertices split equally among their inputs.  Returns (vertex flow, the fraction of
    each edge's head's flow that comes along the edge)."""
    G = g.nx
    weights: dict[tuple[str, str], float] = defaultdict(float)
    by_vid = {m.vid: m for m in g.merges}
    for s in G:
        preds = list(G.predecessors(s))
        if not preds:
            continue
        m = by_vid.get(s)
        if m is not None and s in shares:
            for i, op in enumerate(m.operands):
                for p in op.producers:
                    weights[(p, s)] += shares[s][i] / len(op.producers)
        else:
            for p in preds:
                weights[(p, s)] += 1 / len(preds)
    flow = {v: 0.0 for v in G}
    flow["output"] = 1.0
    for v in reversed(list(nx.topological_sort(G))):
        if v != "output":
            flow[v] = sum(flow[s] * weights[(v, s)] for s in G.successors(v))
    return flow, dict(weights)
