"""Data-free baselines: weight magnitude of what a removal deletes, and a seeded random score."""

from __future__ import annotations

import torch

from ..graph import Candidate, FlowGraph
from ..graph.removal import within


def magnitude(graph: FlowGraph, cands: list[Candidate]) -> dict[str, float]:
    """RMS of the weights a removal deletes (its module and the modules that die with it)."""
    named = list(graph.model.named_parameters())
    out = {}
    for c in cands:
        paths = [r.path for r in graph.effect([c.id]).replacements]
        ws = [
            p.detach().float().flatten()
            for n, p in named
            if any(within(n.rpartition(".")[0], q) for q in paths)
        ]
        w = torch.cat(ws) if ws else torch.zeros(1)
        out[c.id] = float(w.pow(2).mean().sqrt())
    return out


def random_scores(cands: list[Candidate], seed: int = 0) -> dict[str, float]:
    """Uniform random scores (the floor any criterion should beat)."""
    gen = torch.Generator().manual_seed(seed)
    return {c.id: float(v) for c, v in zip(cands, torch.rand(len(cands), generator=gen))}
