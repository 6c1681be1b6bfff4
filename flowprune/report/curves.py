"""Loss against the number of removals, for each strategy: the data behind the report's curve figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..errors import InputError
from ..solve import Budget, greedy, one_shot, quadratic

if TYPE_CHECKING:
    from . import Report

# ranking criteria drawn by default (those the report has), most faithful first
DEFAULT_CRITERIA = ("loss", "taylor2", "fisher", "flow", "shortgpt", "llmdrop", "magnitude", "random")


def loss_curves(report: "Report", max_removals: int = 8, criteria: Sequence[str] | None = None,
                strategies: Sequence[str] = ("one_shot", "quadratic"), fill: str = "zeros") -> list[dict]:
    """Measure ΔL after removing k = 0 … ``max_removals`` candidates chosen by each strategy: one_shot
    for every criterion in ``criteria`` (default: those of DEFAULT_CRITERIA the report has), quadratic
    (gate Hessian), greedy (exact re-scoring after each removal; the costliest).  Each curve is
    {"strategy", "criterion", "removals" (the chosen sets, k = 1 …), "k", "loss", "params_removed",
    "flops_removed"}; they are stored in ``report.data["curves"]`` and drawn by the HTML report.

    >>> curves = loss_curves(report, 6, strategies=("one_shot", "greedy"))
    """
    from ..score.ablation import exact_rescore

    bad = [s for s in strategies if s not in ("one_shot", "greedy", "quadratic")]
    if bad:
        raise InputError(f"unknown strategies {bad}: use one_shot, greedy or quadratic")
    if max_removals < 1:
        raise InputError(f"max_removals must be at least 1 (got {max_removals})")
    eng = report._live()
    graph, base = eng.graph, report.base_loss
    cands = [graph.candidate(r["id"]) for r in report.candidates]
    criteria = [c for c in (criteria or DEFAULT_CRITERIA) if c in report.criteria]
    runs: list[tuple[str, str, list[list[str]]]] = []
    with eng:
        if "one_shot" in strategies:
            for crit in criteria:
                order = one_shot(graph, cands, report.scores(crit), Budget(count=max_removals), None, fill)
                runs.append(("one_shot", crit, [order[:k] for k in range(1, len(order) + 1)]))
        if "quadratic" in strategies and report.hessian is not None:
            index = {r["id"]: k for k, r in enumerate(report.candidates)}
            sets: list[list[str]] = []
            for k in range(1, max_removals + 1):
                s = quadratic(graph, cands, report.gradient, report.hessian, Budget(count=k), index, fill)
                if len(s) < k:  # no more candidates fit (a layer and a branch inside it exclude each other)
                    break
                sets.append(s)
            runs.append(("quadratic", report.data["hessian_kind"], sets))
        if "greedy" in strategies:
            order = greedy(graph, cands, Budget(count=max_removals), exact_rescore(eng, base), fill)
            runs.append(("greedy", "loss", [order[:k] for k in range(1, len(order) + 1)]))
        curves = []
        for strategy, crit, sets in runs:
            plans = [graph.plan(s, fill) for s in sets]
            curves.append({"strategy": strategy, "criterion": crit, "removals": sets,
                           "k": list(range(len(sets) + 1)),
                           "loss": [0.0] + [eng.loss(s) - base for s in sets],
                           "params_removed": [0] + [p.params_removed for p in plans],
                           "flops_removed": [0] + [p.flops_removed for p in plans]})
    report.data["curves"] = curves
    return curves
