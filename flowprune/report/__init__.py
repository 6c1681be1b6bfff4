"""Report: every candidate with its score under every criterion, their agreement with the exact loss
change, the gate-space Taylor terms, and the plans made — as JSON (versioned) and Markdown."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats

from .._version import __version__
from ..errors import InputError, PlanError
from ..plan import Plan, dump_json, load_json, write_atomic
from ..solve import FILLS, Budget, check_budget, check_choice, check_strategy, greedy, one_shot, quadratic

if TYPE_CHECKING:
    from ..score.engine import Engine

SCHEMA = 2  # 2: graph (vertex and edge flow), loss curves, plan latency
# what every schema has and the renderers read
REQUIRED = {"schema", "version", "model_class", "loss", "base_loss", "num_samples", "total_params", "total_flops",
            "criteria", "candidates", "fidelity", "plans"}
# higher = more important (removed last) for every criterion
DESCRIPTIONS = {
    "loss": "exact ΔL of removing the candidate alone (calibration loss)",
    "kl": "exact KL(original ‖ ablated) per token/sample",
    "spvr": "SPvR: flipped argmax + |Δp| of the originally predicted class, summed over samples",
    "taylor1": "first-order Taylor prediction −g",
    "taylor2": "second-order prediction −g + ½H_cc (exact gate Hessian)",
    "taylor2_diag": "second-order prediction with a Hutchinson estimate of diag(H)",
    "fisher": "second-order prediction −g + ½F_cc (Fisher)",
    "flow": "share of the output's energy that flows through it (propagated along the DAG)",
    "energy": "‖z‖²/‖y‖² at its merge",
    "proximity": "max(0, ‖y‖₁ − ‖y − z‖₁), normalised over the merge's inputs",
    "llmdrop": "LLM-Drop 1 − cos(x, x + f(x))",
    "angular": "arccos(cos(x, x + f(x)))/π",
    "shortgpt": "ShortGPT block influence 1 − cos(in, out) of the enclosing layer",
    "magnitude": "RMS of the weights the removal deletes",
    "random": "uniform random (seeded)",
}


class Report:
    """Scores of every candidate.  ``candidates`` is a list of rows (dicts: id, kind, path, params,
    flops, one column per criterion, rank).  Made by ``flowprune.analyze``; plans from a live report
    (``report.plan``) may re-measure on the model and data; a report read back with ``from_json`` keeps
    everything but that.

    >>> report = flowprune.analyze(model, batches)
    >>> plan = report.plan(Budget(count=2), criterion="loss", strategy="greedy")
    """

    def __init__(self, data: dict, engine: "Engine | None" = None):
        self.data = data
        self._engine = engine

    # -- content -----------------------------------------------------------------------------------
    @property
    def candidates(self) -> list[dict]:
        return self.data["candidates"]

    @property
    def criteria(self) -> list[str]:
        return self.data["criteria"]

    @property
    def fidelity(self) -> dict[str, dict[str, float]]:
        return self.data["fidelity"]

    @property
    def plans(self) -> list[dict]:
        return self.data["plans"]

    @property
    def base_loss(self) -> float:
        return self.data["base_loss"]

    def scores(self, criterion: str) -> dict[str, float]:
        if criterion not in self.criteria:
            raise InputError(f"criterion {criterion!r} was not computed; this report has {self.criteria}")
        return {r["id"]: r[criterion] for r in self.candidates}

    @property
    def gradient(self) -> torch.Tensor | None:
        g = self.data.get("g")
        return None if g is None else torch.tensor(g, dtype=torch.float64)

    @property
    def hessian(self) -> torch.Tensor | None:
        H = self.data.get("H")
        return None if H is None else torch.tensor(H, dtype=torch.float64)

    def predict(self, ids: list[str]) -> float:
        """Taylor prediction of ΔL for removing ``ids`` together (pairwise interactions included)."""
        from ..score.taylor import predict

        if self.gradient is None:
            raise InputError("no Taylor terms in this report: analyze with criteria including 'taylor2' or 'fisher'")
        index = {r["id"]: k for k, r in enumerate(self.candidates)}
        return predict(self.gradient, self.hessian, [index[i] for i in ids])

    def measure(self, ids: list[str]) -> float:
        """Exact ΔL of removing ``ids`` together, on the calibration data (needs a live report)."""
        eng = self._live()
        with eng:
            return eng.loss(ids) - self.base_loss

    def _live(self) -> "Engine":
        if self._engine is None:
            raise PlanError("this report was read from JSON and has no model or data: run flowprune.analyze again")
        return self._engine

    # -- plans ----------------------------------------------------------------------------------------
    def restrict(self, kind: str) -> "Report":
        """Keep only ``kind`` ("branch" or "layer") candidates for planning (rows, g and H alike); in place."""
        check_choice("kind", kind, ("branch", "layer"))
        keep = [k for k, r in enumerate(self.candidates) if r["kind"] == kind]
        if not keep:
            raise InputError(f"this report has no {kind!r} candidates")
        d = self.data
        d["candidates"] = [d["candidates"][k] for k in keep]
        if d.get("g") is not None:
            d["g"] = [d["g"][k] for k in keep]
        if d.get("H") is not None:
            d["H"] = [[d["H"][i][j] for j in keep] for i in keep]
        d["fidelity"] = agreement(d["candidates"], d["criteria"])
        return self

    def measure_model(self, model: Any) -> float:
        """Loss change of ``model`` (e.g. the rewritten one) against the analysed model, on the calibration data."""
        from ..graph.trace import call_model, eval_mode

        eng = self._live()
        eng.references()
        with torch.no_grad(), eval_mode(model):
            losses = [eng.batch_loss(i, call_model(model, eng.inputs(i))) for i in range(len(eng.batches))]
        return eng.mean(losses) - self.base_loss

    def plan(self, budget: Budget | float | int | dict, criterion: str = "loss", strategy: str = "one_shot",
             fill: str = "zeros", latency: bool = False) -> Plan:
        """Choose removals under ``budget`` and return the Plan (removed branches replaced by ``fill``);
        the choice, its predicted and its measured ΔL (with zero fill, through the gates) are appended
        to ``report.plans``.  ``latency=True`` also rewrites a copy and times one forward on the first
        calibration batch before and after (``flowprune.prune`` always does)."""
        from ..score.ablation import exact_rescore

        budget = Budget.parse(budget)
        check_choice("fill", fill, FILLS)
        check_strategy(strategy, criterion, self.criteria, self.data.get("hessian_kind"))
        if strategy == "quadratic" and self.hessian is None:
            raise InputError("strategy='quadratic' needs the gate Hessian: analyze with 'taylor2' or 'fisher'")
        eng = self._live()
        graph = eng.graph
        cands = [graph.candidate(r["id"]) for r in self.candidates]
        check_budget(graph, cands, budget, fill)
        predicted = None
        with eng:
            if strategy == "one_shot":
                measure = (lambda ids: eng.loss(ids) - self.base_loss)
                ids = one_shot(graph, cands, self.scores(criterion), budget, measure, fill)
                if criterion == "loss":
                    predicted = sum(self.scores("loss")[i] for i in ids)
            elif strategy == "greedy":
                ids = greedy(graph, cands, budget, exact_rescore(eng, self.base_loss), fill)
                criterion = "loss"
            elif strategy == "quadratic":
                index = {r["id"]: k for k, r in enumerate(self.candidates)}
                ids = quadratic(graph, cands, self.gradient, self.hessian, budget, index, fill)
                criterion = self.data["hessian_kind"]
            else:
                raise InputError(f"unknown strategy {strategy!r}: use 'one_shot', 'greedy' or 'quadratic'")
            measured = eng.loss(ids) - self.base_loss
        if predicted is None and self.gradient is not None:
            predicted = self.predict(ids)
        if strategy == "greedy":
            predicted = measured  # greedy's choice is scored exactly
        plan = graph.plan(ids, fill)
        self.plans.append({"criterion": criterion, "strategy": strategy, "fill": fill, "budget": asdict(budget), "removals": ids,
                           "params_removed": plan.params_removed, "flops_removed": plan.flops_removed,
                           "predicted": predicted, "measured": measured})
        if latency:
            from ..rewrite import apply

            self.record_latency(apply(eng.model, plan, data=eng.batches))
        return plan

    def record_latency(self, pruned: Any) -> dict:
        """Time one forward of the analysed model and of ``pruned`` (the last plan, applied) on the first
        calibration batch; stored as the last plan's ``latency`` (seconds)."""
        from ..latency import latency

        eng = self._live()
        if not self.plans:
            raise PlanError("no plan to attach a latency to: call report.plan first")
        x = eng.inputs(0)
        lat = {"before": latency(eng.model, x), "after": latency(pruned, x), "batch": eng.sizes[0]}
        self.plans[-1]["latency"] = lat
        return lat

    # -- output ---------------------------------------------------------------------------------------
    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON (``schema`` versioned); written atomically to ``path`` if given."""
        return dump_json(_finite(self.data), path)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "Report":
        data = load_json(text_or_path)
        missing = sorted(REQUIRED - set(data)) if isinstance(data, dict) else ["(not an object)"]
        if missing or not isinstance(data.get("schema"), int):
            raise InputError(f"this JSON is not a flowprune report (missing {missing or ['an integer schema']}): "
                             f"pass the report.json that analyze, prune or Report.to_json wrote")
        if data["schema"] > SCHEMA:
            raise PlanError(f"report schema {data['schema']} is newer than this flowprune ({__version__}) reads")
        data.setdefault("curves", [])  # schema 1 had neither
        data.setdefault("graph", None)
        return cls(data)

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """Summary, plans, candidates, agreement and loss curves as Markdown; written atomically to
        ``path`` if given."""
        from .markdown import render

        text = render(self.data, DESCRIPTIONS)
        if path is not None:
            write_atomic(path, text)
        return text

    def to_html(self, path: str | os.PathLike | None = None, criterion: str | None = None) -> str:
        """One self-contained HTML page (figures as embedded SVG, no network); vertices of the flow graph
        coloured by ``criterion`` (default: the ranking criterion).  Written atomically to ``path``.

        >>> report.to_html("report.html")
        """
        from .html import render

        if criterion is not None and criterion not in self.criteria:
            raise InputError(f"criterion {criterion!r} is not in this report; it has {self.criteria}")
        text = render(_finite(self.data), DESCRIPTIONS, criterion)
        if path is not None:
            write_atomic(path, text)
        return text

    def loss_curves(self, max_removals: int = 8, criteria: list[str] | None = None,
                    strategies: tuple[str, ...] = ("one_shot", "quadratic")) -> list[dict]:
        """Measure ΔL after 0 … ``max_removals`` removals per strategy (and per criterion for one_shot);
        stored in the report for the HTML figure.  Needs a live report.  See ``curves.loss_curves``.

        >>> report.loss_curves(6, strategies=("one_shot", "greedy"))
        """
        from .curves import loss_curves

        return loss_curves(self, max_removals, criteria, strategies)


def agreement(rows: list[dict], criteria: list[str], reference: str = "loss") -> dict[str, dict[str, float]]:
    """Spearman and Kendall rank correlation of each criterion with ``reference``."""
    if reference not in criteria or len(rows) < 3:
        return {}
    ref = np.array([r[reference] for r in rows], dtype=float)
    out = {}
    for c in criteria:
        if c == reference:
            continue
        v = np.array([r[c] for r in rows], dtype=float)
        ok = np.isfinite(v) & np.isfinite(ref)
        if ok.sum() < 3 or np.ptp(v[ok]) == 0:
            continue
        out[c] = {"spearman": float(stats.spearmanr(v[ok], ref[ok]).statistic),
                  "kendall": float(stats.kendalltau(v[ok], ref[ok]).statistic)}
    return out


def _finite(obj: Any) -> Any:
    # JSON has no NaN: write null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
