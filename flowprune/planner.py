"""Planning on the live model and data: choose removals under a budget (through ``solve.STRATEGIES``),
measure what they cost exactly, time the rewritten model, and the loss-against-removals curves.

A ``Report`` made by ``analyze`` holds a ``Planner`` (``report.planner``); one read back from JSON has
none, so it can be read and rendered but not re-planned.

>>> report = flowprune.analyze(model, batches)
>>> plan, record = report.planner.plan(Budget(count=2), strategy="greedy")
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import torch

from ._runtime import call_model, eval_mode
from .analyses import MATRIX_PREFERENCE
from .errors import InputError
from .latency import latency
from .plan import Plan
from .report.data import PlanRecord, ReportData
from .rewrite import apply
from .score.ablation import exact_rescore
from .score.engine import Engine
from .solve import (
    DEFAULT_STRATEGY,
    FILLS,
    STRATEGIES,
    Budget,
    Problem,
    check_budget,
    check_choice,
    check_strategy,
    predict,
)

# ranking criteria drawn by default in the loss curves (those the report has), most faithful first
CURVE_CRITERIA = ("loss", "taylor2", "fisher", "flow", "shortgpt", "llmdrop", "magnitude", "random")


class Planner:
    """The analysed model and calibration data behind a report (``data``: its ``ReportData``, shared
    with the report, so ``report.restrict`` is seen here)."""

    def __init__(self, engine: Engine, data: ReportData):
        self.engine = engine
        self.data = data

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    @property
    def batches(self) -> list:
        return self.engine.batches

    # -- the problem a strategy solves ------------------------------------------------------------
    def problem(self, budget: Budget, criterion: str = "loss", fill: str = "zeros") -> Problem:
        eng, d = self.engine, self.data
        graph = eng.graph
        g = None if d.g is None else torch.tensor(d.g, dtype=torch.float64)
        H = None if d.H is None else torch.tensor(d.H, dtype=torch.float64)
        scores = {r["id"]: r[criterion] for r in d.candidates} if criterion in d.criteria else None
        return Problem(
            graph,
            [graph.candidate(r["id"]) for r in d.candidates],
            budget,
            fill,
            scores=scores,
            g=g,
            H=H,
            index={r["id"]: k for k, r in enumerate(d.candidates)},
            measure=lambda ids: eng.loss(ids) - d.base_loss,
            rescore=exact_rescore(eng, d.base_loss),
        )

    def plan(
        self,
        budget: Budget | float | int | dict,
        criterion: str = "loss",
        strategy: str = DEFAULT_STRATEGY,
        fill: str = "zeros",
    ) -> tuple[Plan, PlanRecord]:
        """Choose under ``budget`` with ``strategy`` (ranking by ``criterion`` for one_shot), measure the
        choice exactly (through the gates, zero fill) and return the Plan with its record."""
        budget = Budget.parse(budget)
        check_choice("fill", fill, FILLS)
        check_strategy(strategy, criterion, self.data.criteria, self.data.hessian_kind)
        s = STRATEGIES[strategy]
        if s.needs == "matrix" and self.data.g is None:
            raise InputError(
                f"strategy={strategy!r} needs a gate-space matrix: analyze with one of "
                f"{', '.join(MATRIX_PREFERENCE)}"
            )
        p = self.problem(budget, criterion, fill)
        check_budget(p.graph, p.candidates, budget, fill)
        eng = self.engine
        with eng:
            ids = s.solve(p)
            measured = eng.loss(ids) - self.data.base_loss
        predicted = self._predicted(s.needs, criterion, ids, measured, p)
        used = {"exact": "loss", "matrix": self.data.hessian_kind}.get(s.needs, criterion)
        plan = p.graph.plan(ids, fill)
        record = PlanRecord(
            criterion=used,
            strategy=strategy,
            fill=fill,
            budget=asdict(budget),
            removals=ids,
            params_removed=plan.params_removed,
            flops_removed=plan.flops_removed,
            predicted=predicted,
            measured=measured,
            plan=plan,
        )
        return plan, record

    def _predicted(
        self, needs: str, criterion: str, ids: list[str], measured: float, p: Problem
    ) -> float | None:
        if needs == "exact":
            return measured  # greedy's choice is scored exactly
        if needs == "scores" and criterion == "loss":
            return sum(p.scores[i] for i in ids)  # single-removal ΔL, added up
        if p.g is not None:
            return predict(p.g, p.H, [p.index[i] for i in ids])
        return None

    # -- measuring -----------------------------------------------------------------------------------
    def measure(self, ids: list[str]) -> float:
        """Exact ΔL of removing ``ids`` together on the calibration data."""
        with self.engine as eng:
            return eng.loss(ids) - self.data.base_loss

    def measure_model(self, model: Any) -> float:
        """Loss change of ``model`` (e.g. the rewritten one) against the analysed model, on the
        calibration data."""
        eng = self.engine
        eng.references()
        with torch.no_grad(), eval_mode(model):
            losses = [
                eng.batch_loss(i, call_model(model, eng.inputs(i))) for i in range(len(eng.batches))
            ]
        return eng.mean(losses) - self.data.base_loss

    def latency(self, pruned: Any) -> dict:
        """Seconds of one forward of the analysed model and of ``pruned`` on the first calibration batch."""
        x = self.engine.inputs(0)
        return {
            "before": latency(self.model, x),
            "after": latency(pruned, x),
            "batch": self.engine.sizes[0],
        }

    def rewrite(self, plan: Plan) -> torch.nn.Module:
        """``plan`` applied to a copy of the analysed model (fills fitted on the calibration data)."""
        return apply(self.model, plan, data=self.batches)

    # -- curves ----------------------------------------------------------------------------------------
    def loss_curves(
        self,
        max_removals: int = 8,
        criteria: Sequence[str] | None = None,
        strategies: Sequence[str] = ("one_shot", "quadratic"),
        fill: str = "zeros",
    ) -> list[dict]:
        """ΔL after removing k = 0 … ``max_removals`` candidates chosen by each strategy: one_shot for
        every criterion in ``criteria`` (default: those of CURVE_CRITERIA the report has), a "matrix"
        strategy with the report's matrix, an "exact" one (greedy: the costliest).  Each curve is
        {"strategy", "criterion", "removals" (the chosen sets, k = 1 …), "k", "loss", "params_removed",
        "flops_removed"}; stops early when no more candidates fit."""
        for s in strategies:
            check_choice("strategy", s, tuple(STRATEGIES))
        if isinstance(max_removals, bool) or not isinstance(max_removals, int) or max_removals < 1:
            raise InputError(f"max_removals must be a whole number ≥ 1 (got {max_removals!r})")
        d, eng = self.data, self.engine
        criteria = [c for c in (criteria or CURVE_CRITERIA) if c in d.criteria]
        runs: list[tuple[str, str, list[list[str]]]] = []
        with eng:
            for name in strategies:
                s = STRATEGIES[name]
                if s.needs == "scores":
                    for crit in criteria:  # one ranking: its prefixes are the sets
                        order = s.solve(self.problem(Budget(count=max_removals), crit, fill))
                        runs.append((name, crit, [order[:k] for k in range(1, len(order) + 1)]))
                elif (
                    s.needs == "matrix" and d.g is not None
                ):  # the optimum changes with k: solve each
                    sets = []
                    for k in range(1, max_removals + 1):
                        chosen = s.solve(self.problem(Budget(count=k), "loss", fill))
                        if len(chosen) < k:  # no more candidates fit together
                            break
                        sets.append(chosen)
                    runs.append((name, d.hessian_kind, sets))
                elif s.needs == "exact":  # sequential: the sets are nested
                    order = s.solve(self.problem(Budget(count=max_removals), "loss", fill))
                    runs.append((name, "loss", [order[:k] for k in range(1, len(order) + 1)]))
            curves = []
            graph = eng.graph
            for name, crit, sets in runs:
                plans = [graph.plan(x, fill) for x in sets]
                curves.append(
                    {
                        "strategy": name,
                        "criterion": crit,
                        "removals": sets,
                        "k": list(range(len(sets) + 1)),
                        "loss": [0.0] + [eng.loss(x) - d.base_loss for x in sets],
                        "params_removed": [0] + [p.params_removed for p in plans],
                        "flops_removed": [0] + [p.flops_removed for p in plans],
                    }
                )
        return curves
