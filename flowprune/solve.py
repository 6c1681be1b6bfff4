"""Budgets and the solvers that pick what to remove.

* ``one_shot``: remove in the order of one criterion (least important first) until the budget is met.
* ``greedy``: after each removal, re-score every remaining candidate by its exact loss change (with
  replay) and remove the cheapest.
* ``quadratic``: minimise the gate-space Taylor prediction −Σg + ½ΣH over the set (greedy forward
  selection, then swaps while they lower the prediction); the chosen set is checked by exact evaluation.

Candidates that overlap (a layer and a branch inside it) are never both chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .errors import InputError
from .graph.removal import within

if TYPE_CHECKING:
    from .graph import Candidate, FlowGraph


@dataclass(frozen=True)
class Budget:
    """Exactly one of: ``count`` removals, a fraction of ``params`` or ``flops`` to remove (at least), or a
    ceiling ``max_loss_increase`` on the loss change (measured for one_shot and greedy, predicted for
    quadratic).

    >>> Budget(params=0.25)      # remove at least 25 % of the parameters
    """

    count: int | None = None
    params: float | None = None
    flops: float | None = None
    max_loss_increase: float | None = None

    def __post_init__(self) -> None:
        set_ = [k for k in ("count", "params", "flops", "max_loss_increase") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise InputError(f"Budget takes exactly one of count, params, flops, max_loss_increase; got {set_ or 'none'}")
        for k in ("params", "flops"):
            v = getattr(self, k)
            if v is not None and not 0 < v <= 1:
                raise InputError(f"Budget({k}={v}): a fraction in (0, 1], e.g. {k}=0.25 for a quarter")
        if self.count is not None and self.count < 0:
            raise InputError("Budget(count=...) must be >= 0")

    @classmethod
    def parse(cls, value: "Budget | float | int | dict") -> "Budget":
        """A Budget from a Budget, a dict, an int (count) or a float in (0, 1) (params fraction)."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, bool):
            raise InputError("budget must be a Budget, an int count or a float fraction of parameters")
        if isinstance(value, int):
            return cls(count=value)
        if isinstance(value, float):
            return cls(params=value)
        raise InputError(f"budget must be a Budget, an int count or a float fraction of parameters, got {value!r}")

    def met(self, graph: "FlowGraph", ids: list[str], fill: str = "zeros") -> bool:
        if self.count is not None:
            return len(ids) >= self.count
        if self.max_loss_increase is not None:
            return False  # decided by the solvers from measured losses
        eff = graph.effect(ids, fill)
        if self.params is not None:
            return eff.params >= self.params * graph.total_params
        return eff.flops >= self.flops * graph.total_flops


def overlaps(a: "Candidate", b: "Candidate") -> bool:
    return within(a.path, b.path) or within(b.path, a.path)


def _free(c: "Candidate", chosen: list["Candidate"]) -> bool:
    return all(not overlaps(c, s) for s in chosen)


def one_shot(graph: "FlowGraph", cands: list["Candidate"], scores: dict[str, float], budget: Budget,
             measure: Callable[[list[str]], float] | None, fill: str = "zeros") -> list[str]:
    """In increasing score order.  For a loss ceiling each addition is measured and kept if it fits."""
    chosen: list[Candidate] = []
    for c in sorted(cands, key=lambda c: scores[c.id]):
        if budget.met(graph, [s.id for s in chosen], fill):
            break
        if not _free(c, chosen):
            continue
        if budget.max_loss_increase is not None:
            if measure is None:
                raise InputError("a max_loss_increase budget needs the model and data: plan from a live report")
            if measure([s.id for s in chosen] + [c.id]) > budget.max_loss_increase:
                continue
        chosen.append(c)
    return [c.id for c in chosen]


def greedy(graph: "FlowGraph", cands: list["Candidate"], budget: Budget,
           rescore: Callable[[list[str], list[str]], dict[str, float]], fill: str = "zeros") -> list[str]:
    """``rescore(remaining ids, removed ids)`` -> exact ΔL of each remaining one given the removed ones,
    relative to the original loss."""
    chosen: list[Candidate] = []
    while not budget.met(graph, [s.id for s in chosen], fill):
        rest = [c for c in cands if _free(c, chosen)]
        if not rest:
            break
        dl = rescore([c.id for c in rest], [s.id for s in chosen])
        best = min(rest, key=lambda c: dl[c.id])
        if budget.max_loss_increase is not None and dl[best.id] > budget.max_loss_increase:
            break
        chosen.append(best)
    return [c.id for c in chosen]


def quadratic(graph: "FlowGraph", cands: list["Candidate"], g: torch.Tensor, H: torch.Tensor, budget: Budget,
              index: dict[str, int], fill: str = "zeros") -> list[str]:
    """Minimise the Taylor prediction of ΔL(S) under the budget.  A loss ceiling bounds the *prediction*;
    the measured ΔL of the chosen set is recorded next to it by ``Report.plan``."""
    from .score.taylor import predict

    def pred(ids: list[str]) -> float:
        return predict(g, H, [index[i] for i in ids])

    chosen: list[Candidate] = []
    while not budget.met(graph, [s.id for s in chosen], fill):
        base = [s.id for s in chosen]
        rest = [c for c in cands if _free(c, chosen)]
        if not rest:
            break
        best = min(rest, key=lambda c: pred(base + [c.id]))
        if budget.max_loss_increase is not None and pred(base + [best.id]) > budget.max_loss_increase:
            break
        chosen.append(best)
    improved = budget.count is not None
    while improved:  # swaps keep the count; take the first that lowers the prediction
        improved = False
        ids = [s.id for s in chosen]
        for k, s in enumerate(chosen):
            others = chosen[:k] + chosen[k + 1:]
            for c in cands:
                if c.id in ids or not _free(c, others):
                    continue
                trial = [o.id for o in others] + [c.id]
                if pred(trial) < pred(ids) - 1e-12:
                    chosen = others + [c]
                    improved = True
                    break
            if improved:
                break
    return [c.id for c in chosen]
