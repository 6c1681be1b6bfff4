"""Budgets and the solvers that pick what to remove.

* ``one_shot``: remove in the order of one criterion (least important first) until the budget is met.
* ``greedy``: after each removal, re-score every remaining candidate by its exact loss change (with
  replay) and remove the cheapest.
* ``quadratic``: minimise the gate-space Taylor prediction −Σg + ½ΣH over the set (greedy forward
  selection, then swaps while they lower the prediction); the chosen set is checked by exact evaluation.

Candidates that overlap (a layer and a branch inside it) are never both chosen.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .errors import InputError
from .graph.removal import encloses

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
        key = set_[0]
        v = getattr(self, key)
        if key == "count":
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise InputError(f"Budget(count={v!r}): a whole number of removals, e.g. count=2")
            if v < 0:
                raise InputError(f"Budget(count={v}) must be >= 0")
            return
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InputError(f"Budget({key}={v!r}): a number, e.g. {key}={0.25 if key != 'max_loss_increase' else 0.1}")
        if not math.isfinite(v):
            raise InputError(f"Budget({key}={v}) is not a finite number: give e.g. {key}=0.25")
        if key in ("params", "flops") and not 0 < v <= 1:
            raise InputError(f"Budget({key}={v}): a fraction in (0, 1], e.g. {key}=0.25 for a quarter")
        if key == "max_loss_increase" and v < 0:
            raise InputError(f"Budget(max_loss_increase={v}) must be >= 0 (a ceiling on the loss increase)")

    @classmethod
    def parse(cls, value: "Budget | float | int | dict") -> "Budget":
        """A Budget from a Budget, a dict, an int (count) or a float in (0, 1) (params fraction)."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"count", "params", "flops", "max_loss_increase"})
            if unknown:
                raise InputError(f"budget dict has unknown keys {unknown}: use count, params, flops or "
                                 f"max_loss_increase")
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


STRATEGIES = ("one_shot", "greedy", "quadratic")
FILLS = ("zeros", "mean", "linear")
KINDS = ("all", "branch", "layer")
HESSIANS = ("taylor2", "fisher", "taylor2_diag")  # criteria that come with a gate-space matrix


def check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    """InputError unless ``value`` is one of ``choices`` (checked before any work starts)."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def check_strategy(strategy: str, criterion: str, known: list[str] | tuple[str, ...],
                   hessian_kind: str | None = None) -> None:
    """Raise InputError when ``criterion`` cannot drive ``strategy``: one_shot ranks by any computed
    criterion; greedy always re-scores by the exact loss; quadratic minimises the Taylor prediction of
    the report's gate-space matrix (``criterion`` "loss", the default, or that matrix's name).

    >>> check_strategy("greedy", "flow", ["loss", "flow"])
    Traceback (most recent call last):
    InputError: ...
    """
    check_choice("strategy", strategy, STRATEGIES)
    if not isinstance(criterion, str) or criterion not in known:
        raise InputError(f"unknown criterion {criterion!r} for strategy {strategy!r}: this analysis has "
                         f"{', '.join(known)}")
    if strategy == "greedy" and criterion != "loss":
        raise InputError(f"strategy='greedy' re-scores by the exact loss after every removal, so "
                         f"criterion={criterion!r} would be ignored: pass criterion='loss', or "
                         f"strategy='one_shot' to rank by {criterion}")
    if strategy == "quadratic" and criterion != "loss" and criterion != hessian_kind:
        have = f"the {hessian_kind} matrix" if hessian_kind else "no gate-space matrix"
        raise InputError(f"strategy='quadratic' minimises the Taylor prediction of a gate-space matrix "
                         f"({', '.join(HESSIANS)}); criterion={criterion!r} is not it (this analysis has "
                         f"{have}): pass criterion='loss' for the analysis' own matrix")


def max_removals(cands: list["Candidate"]) -> int:
    """The most candidates one plan can remove: those with no other candidate inside them (a layer
    and a branch inside it exclude each other; nesting is a forest, whose leaves are its largest
    antichain)."""
    uniq = list({(c.path, c.call): c for c in cands}.values())  # per-call: each call of a shared module
    return sum(1 for c in uniq if not any(d is not c and encloses(c, d) for d in uniq))


def reachable(graph: "FlowGraph", cands: list["Candidate"], fill: str = "zeros") -> tuple[int, int]:
    """(params, FLOPs) removed by the outermost candidates together: the most any plan can remove."""
    outer = [c for c in cands if not any(o.path != c.path and encloses(o, c) for o in cands)]
    seen: dict[tuple, "Candidate"] = {}
    for c in outer:
        seen.setdefault((c.path, c.call), c)
    eff = graph.effect([c.id for c in seen.values()], fill)
    return eff.params, eff.flops


def check_budget(graph: "FlowGraph", cands: list["Candidate"], budget: Budget, fill: str = "zeros") -> None:
    """InputError when no plan over ``cands`` can meet ``budget``, naming the most that can be reached."""
    if not cands:
        raise InputError(f"{type(graph.model).__name__} has no removal candidates (no residual branch, concat "
                         f"input or removable layer was found), so nothing can be pruned; "
                         f"see FlowGraph.summary() and the README's candidate rules")
    if budget.count is not None and budget.count > max_removals(cands):
        raise InputError(f"Budget(count={budget.count}) asks for more removals than can be made together: "
                         f"at most {max_removals(cands)} of the {len(cands)} candidates (a layer and a branch "
                         f"inside it exclude each other)")
    for key, total, k in (("params", graph.total_params, 0), ("flops", graph.total_flops, 1)):
        want = getattr(budget, key)
        if want is None:
            continue
        most = reachable(graph, cands, fill)[k] / max(total, 1)
        if want > most + 1e-12:
            raise InputError(f"Budget({key}={want}) cannot be met: removing every candidate removes at most "
                             f"{most:.1%} of the {key} (fill={fill!r}); ask for at most {most:.3f}")


def overlaps(a: "Candidate", b: "Candidate") -> bool:
    """One inside the other (for per-call candidates: their calls nest; two calls of one module do not)."""
    return encloses(a, b) or encloses(b, a)


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
