"""Budgets, the checks of a planning request, and the strategies that pick what to remove.

Every strategy is one entry of ``STRATEGIES``: a function of a ``Problem`` (candidates, budget,
fill, and what it may consult) that returns the chosen ids.  Adding one::

    def random_pick(p: Problem) -> list[str]: ...
    STRATEGIES["random_pick"] = Strategy("random_pick", random_pick, "scores", "…")

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from .analyses import MATRIX_PREFERENCE
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
        set_ = [
            k
            for k in ("count", "params", "flops", "max_loss_increase")
            if getattr(self, k) is not None
        ]
        if len(set_) != 1:
            raise InputError(
                f"Budget takes exactly one of count, params, flops, max_loss_increase; got {set_ or 'none'}"
            )
        key = set_[0]
        v = getattr(self, key)
        if key == "count":
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise InputError(f"Budget(count={v!r}): a whole number of removals, e.g. count=2")
            if v < 0:
                raise InputError(f"Budget(count={v}) must be >= 0")
            return
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InputError(
                f"Budget({key}={v!r}): a number, e.g. {key}={0.25 if key != 'max_loss_increase' else 0.1}"
            )
        if not math.isfinite(v):
            raise InputError(f"Budget({key}={v}) is not a finite number: give e.g. {key}=0.25")
        if key in ("params", "flops") and not 0 < v <= 1:
            raise InputError(
                f"Budget({key}={v}): a fraction in (0, 1], e.g. {key}=0.25 for a quarter"
            )
        if key == "max_loss_increase" and v < 0:
            raise InputError(
                f"Budget(max_loss_increase={v}) must be >= 0 (a ceiling on the loss increase)"
            )

    @classmethod
    def parse(cls, value: "Budget | float | int | dict") -> "Budget":
        """A Budget from a Budget, a dict, an int (count) or a float in (0, 1) (params fraction)."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"count", "params", "flops", "max_loss_increase"})
            if unknown:
                raise InputError(
                    f"budget dict has unknown keys {unknown}: use count, params, flops or "
                    f"max_loss_increase"
                )
            return cls(**value)
        if isinstance(value, bool):
            raise InputError(
                "budget must be a Budget, an int count or a float fraction of parameters"
            )
        if isinstance(value, int):
            return cls(count=value)
        if isinstance(value, float):
            return cls(params=value)
        raise InputError(
            f"budget must be a Budget, an int count or a float fraction of parameters, got {value!r}"
        )

    def met(self, graph: "FlowGraph", ids: list[str], fill: str = "zeros") -> bool:
        if self.count is not None:
            return len(ids) >= self.count
        if self.max_loss_increase is not None:
            return False  # decided by the solvers from measured losses
        eff = graph.effect(ids, fill)
        if self.params is not None:
            return eff.params >= self.params * graph.total_params
        return eff.flops >= self.flops * graph.total_flops


FILLS = ("zeros", "mean", "linear")
KINDS = ("all", "branch", "layer")


def check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    """InputError unless ``value`` is one of ``choices`` (checked before any work starts)."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def check_strategy(
    strategy: str,
    criterion: str,
    known: list[str] | tuple[str, ...],
    hessian_kind: str | None = None,
) -> None:
    """Raise InputError when ``criterion`` cannot drive ``strategy``: one_shot ranks by any computed
    criterion; greedy always re-scores by the exact loss; quadratic minimises the Taylor prediction of
    the report's gate-space matrix (``criterion`` "loss", the default, or that matrix's name).

    >>> check_strategy("greedy", "flow", ["loss", "flow"])
    Traceback (most recent call last):
    InputError: ...
    """
    check_choice("strategy", strategy, tuple(STRATEGIES))
    if not isinstance(criterion, str) or criterion not in known:
        raise InputError(
            f"unknown criterion {criterion!r} for strategy {strategy!r}: this analysis has "
            f"{', '.join(known)}"
        )
    needs = STRATEGIES[strategy].needs
    if needs == "exact" and criterion != "loss":
        raise InputError(
            f"strategy={strategy!r} re-scores by the exact loss after every removal, so "
            f"criterion={criterion!r} would be ignored: pass criterion='loss', or "
            f"strategy='one_shot' to rank by {criterion}"
        )
    if needs == "matrix" and criterion != "loss" and criterion != hessian_kind:
        have = f"the {hessian_kind} matrix" if hessian_kind else "no gate-space matrix"
        raise InputError(
            f"strategy={strategy!r} minimises the Taylor prediction of a gate-space matrix "
            f"({', '.join(MATRIX_PREFERENCE)}); criterion={criterion!r} is not it (this analysis has "
            f"{have}): pass criterion='loss' for the analysis' own matrix"
        )


def max_removals(cands: list["Candidate"]) -> int:
    """The most candidates one plan can remove: those with no other candidate inside them (a layer
    and a branch inside it exclude each other; nesting is a forest, whose leaves are its largest
    antichain)."""
    # per-call candidates: each call of a shared module counts
    uniq = list({(c.path, c.call): c for c in cands}.values())
    return sum(1 for c in uniq if not any(d is not c and encloses(c, d) for d in uniq))


def reachable(graph: "FlowGraph", cands: list["Candidate"], fill: str = "zeros") -> tuple[int, int]:
    """(params, FLOPs) removed by the outermost candidates together: the most any plan can remove."""
    outer = [c for c in cands if not any(o.path != c.path and encloses(o, c) for o in cands)]
    seen: dict[tuple, "Candidate"] = {}
    for c in outer:
        seen.setdefault((c.path, c.call), c)
    eff = graph.effect([c.id for c in seen.values()], fill)
    return eff.params, eff.flops


def check_budget(
    graph: "FlowGraph", cands: list["Candidate"], budget: Budget, fill: str = "zeros"
) -> None:
    """InputError when no plan over ``cands`` can meet ``budget``, naming the most that can be reached."""
    if not cands:
        raise InputError(
            f"{type(graph.model).__name__} has no removal candidates (no residual branch, concat "
            f"input or removable layer was found), so nothing can be pruned; "
            f"see FlowGraph.summary() and the README's candidate rules"
        )
    if budget.count is not None and budget.count > max_removals(cands):
        raise InputError(
            f"Budget(count={budget.count}) asks for more removals than can be made together: "
            f"at most {max_removals(cands)} of the {len(cands)} candidates (a layer and a branch "
            f"inside it exclude each other)"
        )
    for key, total, k in (("params", graph.total_params, 0), ("flops", graph.total_flops, 1)):
        want = getattr(budget, key)
        if want is None:
            continue
        most = reachable(graph, cands, fill)[k] / max(total, 1)
        if want > most + 1e-12:
            raise InputError(
                f"Budget({key}={want}) cannot be met: removing every candidate removes at most "
                f"{most:.1%} of the {key} (fill={fill!r}); ask for at most {most:.3f}"
            )


def overlaps(a: "Candidate", b: "Candidate") -> bool:
    """One inside the other (for per-call candidates: their calls nest; two calls of one module do not)."""
    return encloses(a, b) or encloses(b, a)


def _free(c: "Candidate", chosen: list["Candidate"]) -> bool:
    return all(not overlaps(c, s) for s in chosen)


@dataclass
class Problem:
    """What a strategy chooses from: the candidates, the budget, the fill, and what it may consult —
    ``scores`` (one criterion, higher = more important), the gate-space ``g``/``H`` (with ``index``:
    candidate id → row), ``measure(ids)`` (exact ΔL of removing ``ids`` together) and
    ``rescore(rest, removed)`` (exact ΔL of each of ``rest`` given ``removed`` gone).  The last two
    need the live model and data; a strategy that needs one that is None raises InputError."""

    graph: "FlowGraph"
    candidates: list["Candidate"]
    budget: Budget
    fill: str = "zeros"
    scores: dict[str, float] | None = None
    g: torch.Tensor | None = None
    H: torch.Tensor | None = None
    index: dict[str, int] = field(default_factory=dict)
    measure: Callable[[list[str]], float] | None = None
    rescore: Callable[[list[str], list[str]], dict[str, float]] | None = None

    def met(self, ids: list[str]) -> bool:
        return self.budget.met(self.graph, ids, self.fill)


@dataclass(frozen=True)
class Strategy:
    """A named solver: ``solve(problem) -> chosen ids``, what it ``needs`` ("scores": one criterion;
    "matrix": the gate-space g and H; "exact": exact re-scoring on the model), a one-line description."""

    name: str
    solve: Callable[[Problem], list[str]]
    needs: str
    description: str


def predict(g: torch.Tensor, H: torch.Tensor | None, idx: list[int]) -> float:
    """Taylor prediction of ΔL for removing the candidates at rows ``idx`` together:
    −Σ g + ½ Σ H over the set (every pairwise interaction included)."""
    if not idx:
        return 0.0
    s = torch.tensor(idx)
    pred = -g[s].sum()
    if H is not None:
        pred = pred + 0.5 * H[s][:, s].sum()
    return float(pred)


def one_shot(p: Problem) -> list[str]:
    """In increasing score order.  For a loss ceiling each addition is measured and kept if it fits."""
    chosen: list[Candidate] = []
    for c in sorted(p.candidates, key=lambda c: p.scores[c.id]):
        if p.met([s.id for s in chosen]):
            break
        if not _free(c, chosen):
            continue
        if p.budget.max_loss_increase is not None:
            if p.measure is None:
                raise InputError(
                    "a max_loss_increase budget needs the model and data: plan from a live report"
                )
            if p.measure([s.id for s in chosen] + [c.id]) > p.budget.max_loss_increase:
                continue
        chosen.append(c)
    return [c.id for c in chosen]


def greedy(p: Problem) -> list[str]:
    """After each removal re-score every remaining candidate exactly (``p.rescore``) and take the cheapest."""
    if p.rescore is None:
        raise InputError(
            "strategy='greedy' re-scores on the model and data: plan from a live report"
        )
    chosen: list[Candidate] = []
    while not p.met([s.id for s in chosen]):
        rest = [c for c in p.candidates if _free(c, chosen)]
        if not rest:
            break
        dl = p.rescore([c.id for c in rest], [s.id for s in chosen])
        best = min(rest, key=lambda c: dl[c.id])
        if p.budget.max_loss_increase is not None and dl[best.id] > p.budget.max_loss_increase:
            break
        chosen.append(best)
    return [c.id for c in chosen]


def quadratic(p: Problem) -> list[str]:
    """Minimise the Taylor prediction of ΔL(S) under the budget (forward selection, then swaps while
    they lower it).  A loss ceiling bounds the *prediction*; the measured ΔL is recorded next to it."""
    if p.g is None:
        raise InputError(
            "strategy='quadratic' needs the gate Hessian: analyze with 'taylor2' or 'fisher'"
        )

    def pred(ids: list[str]) -> float:
        return predict(p.g, p.H, [p.index[i] for i in ids])

    chosen: list[Candidate] = []
    while not p.met([s.id for s in chosen]):
        base = [s.id for s in chosen]
        rest = [c for c in p.candidates if _free(c, chosen)]
        if not rest:
            break
        best = min(rest, key=lambda c: pred(base + [c.id]))
        if (
            p.budget.max_loss_increase is not None
            and pred(base + [best.id]) > p.budget.max_loss_increase
        ):
            break
        chosen.append(best)
    improved = p.budget.count is not None
    while improved:  # swaps keep the count; take the first that lowers the prediction
        improved = False
        ids = [s.id for s in chosen]
        for k, s in enumerate(chosen):
            others = chosen[:k] + chosen[k + 1 :]
            for c in p.candidates:
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


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "one_shot",
            one_shot,
            "scores",
            "remove in the order of one criterion, least important first",
        ),
        Strategy(
            "greedy",
            greedy,
            "exact",
            "after each removal re-score the rest by their exact ΔL (replay)",
        ),
        Strategy(
            "quadratic",
            quadratic,
            "matrix",
            "minimise the gate-space Taylor prediction −Σg + ½ΣH (interactions included)",
        ),
    )
}
DEFAULT_STRATEGY = "greedy"  # prune, Report.plan and the CLI alike: the best measured quality
