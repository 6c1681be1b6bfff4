"""Report: every candidate with its score under every criterion, their agreement with the exact loss
change, the gate-space Taylor terms, and the plans made — as data (``ReportData``) rendered as JSON
(versioned), Markdown and HTML.  Planning and measuring belong to the ``Planner`` a live report holds
(``report.planner``); ``report.plan`` and friends are short ways to call it."""

from __future__ import annotations

import copy
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats

from ..analyses import DESCRIPTIONS
from ..errors import InputError, PlanError
from ..plan import Plan, dump_json, load_json, write_atomic
from ..solve import DEFAULT_STRATEGY, Budget, check_choice, predict
from .data import REPORT_SCHEMA, PlanRecord, ReportData

if TYPE_CHECKING:
    from ..planner import Planner

SCHEMA = REPORT_SCHEMA  # the name of schema ≤ 2, kept one release


class Report:
    """Scores of every candidate (``data``: a ``ReportData``).  ``candidates`` is a list of rows (dicts:
    id, kind, path, params, flops, one column per criterion, rank).  Made by ``flowprune.analyze``,
    with a ``planner`` on the model and data; a report read back with ``from_json`` has none (it can be
    read and rendered, not re-planned).

    >>> report = flowprune.analyze(model, batches)
    >>> plan = report.plan(Budget(count=2), criterion="loss", strategy="greedy")
    """

    def __init__(self, data: ReportData, planner: "Planner | None" = None):
        self.data = data
        self.planner = planner

    # -- content -----------------------------------------------------------------------------------
    @property
    def candidates(self) -> list[dict]:
        return self.data.candidates

    @property
    def criteria(self) -> list[str]:
        return self.data.criteria

    @property
    def fidelity(self) -> dict[str, dict[str, float]]:
        return self.data.fidelity

    @property
    def plans(self) -> list[PlanRecord]:
        """Every plan made from this report (``record.plan`` is the ``Plan``)."""
        return self.data.plans

    @property
    def base_loss(self) -> float:
        return self.data.base_loss

    def scores(self, criterion: str) -> dict[str, float]:
        if criterion not in self.criteria:
            raise InputError(
                f"criterion {criterion!r} was not computed; this report has {self.criteria}"
            )
        return {r["id"]: r[criterion] for r in self.candidates}

    @property
    def gradient(self) -> torch.Tensor | None:
        return None if self.data.g is None else torch.tensor(self.data.g, dtype=torch.float64)

    @property
    def hessian(self) -> torch.Tensor | None:
        return None if self.data.H is None else torch.tensor(self.data.H, dtype=torch.float64)

    def predict(self, ids: list[str]) -> float:
        """Taylor prediction of ΔL for removing ``ids`` together (pairwise interactions included)."""
        if self.gradient is None:
            raise InputError(
                "no Taylor terms in this report: analyze with criteria including 'taylor2' or 'fisher'"
            )
        index = {r["id"]: k for k, r in enumerate(self.candidates)}
        return predict(self.gradient, self.hessian, [index[i] for i in ids])

    def copy(self) -> "Report":
        """A report with its own copy of the data (rows, plans, curves), on the same live model and data:
        restrict or plan it without touching this one.

        >>> layers = report.copy().restrict("layer")
        """
        data = copy.deepcopy(self.data)
        return Report(
            data, None if self.planner is None else type(self.planner)(self.planner.engine, data)
        )

    def restrict(self, kind: str) -> "Report":
        """Keep only ``kind`` ("branch" or "layer") candidates for planning (rows, g and H alike); in place."""
        check_choice("kind", kind, ("branch", "layer"))
        keep = [k for k, r in enumerate(self.candidates) if r["kind"] == kind]
        if not keep:
            raise InputError(f"this report has no {kind!r} candidates")
        d = self.data
        d.candidates = [d.candidates[k] for k in keep]
        if d.g is not None:
            d.g = [d.g[k] for k in keep]
        if d.H is not None:
            d.H = [[d.H[i][j] for j in keep] for i in keep]
        d.fidelity = agreement(d.candidates, d.criteria)
        return self

    # -- planning (on the live model: see flowprune.planner) -----------------------------------------
    def _planner(self) -> "Planner":
        if self.planner is None:
            raise PlanError(
                "this report was read from JSON and has no model or data: run flowprune.analyze again"
            )
        return self.planner

    def plan(
        self,
        budget: Budget | float | int | dict,
        criterion: str = "loss",
        strategy: str = DEFAULT_STRATEGY,
        fill: str = "zeros",
        latency: bool = False,
    ) -> Plan:
        """Choose removals under ``budget`` and return the Plan (removed branches replaced by ``fill``);
        the choice with its predicted and measured ΔL is appended to ``report.plans``.
        ``latency=True`` also rewrites a copy and times one forward on the first calibration batch
        before and after (``flowprune.prune`` always does)."""
        plan, record = self._planner().plan(budget, criterion, strategy, fill)
        self.plans.append(record)
        if latency:
            self.record_latency(self._planner().rewrite(plan))
        return plan

    def measure(self, ids: list[str]) -> float:
        """Exact ΔL of removing ``ids`` together, on the calibration data (needs a live report)."""
        return self._planner().measure(ids)

    def measure_model(self, model: Any) -> float:
        """Loss change of ``model`` (e.g. the rewritten one) against the analysed model, on the calibration data."""
        return self._planner().measure_model(model)

    def record_latency(self, pruned: Any) -> dict:
        """Time one forward of the analysed model and of ``pruned`` (the last plan, applied) on the first
        calibration batch; stored as the last plan's ``latency`` (seconds)."""
        planner = self._planner()
        if not self.plans:
            raise PlanError("no plan to attach a latency to: call report.plan first")
        self.plans[-1].latency = planner.latency(pruned)
        return self.plans[-1].latency

    def loss_curves(
        self,
        max_removals: int = 8,
        criteria: list[str] | None = None,
        strategies: tuple[str, ...] = ("one_shot", "quadratic"),
    ) -> list[dict]:
        """Measure ΔL after 0 … ``max_removals`` removals per strategy (and per criterion for one_shot);
        stored in the report for the HTML figure.  Needs a live report (``Planner.loss_curves``).

        >>> report.loss_curves(6, strategies=("one_shot", "greedy"))
        """
        self.data.curves = self._planner().loss_curves(max_removals, criteria, strategies)
        return self.data.curves

    # -- output ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON form: NaN and inf written as null."""
        return _finite(self.data.to_dict())

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON (``schema`` versioned); written atomically to ``path`` if given."""
        return dump_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "Report":
        return cls(ReportData.from_dict(load_json(text_or_path)))

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """Summary, plans, candidates, agreement and loss curves as Markdown; written atomically to
        ``path`` if given."""
        from .markdown import render

        text = render(self.to_dict(), DESCRIPTIONS)
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
            raise InputError(
                f"criterion {criterion!r} is not in this report; it has {self.criteria}"
            )
        text = render(self.to_dict(), DESCRIPTIONS, criterion)
        if path is not None:
            write_atomic(path, text)
        return text


def agreement(
    rows: list[dict], criteria: list[str], reference: str = "loss"
) -> dict[str, dict[str, float]]:
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
        out[c] = {
            "spearman": float(stats.spearmanr(v[ok], ref[ok]).statistic),
            "kendall": float(stats.kendalltau(v[ok], ref[ok]).statistic),
        }
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


__all__ = ["Report", "ReportData", "PlanRecord", "agreement", "REPORT_SCHEMA"]
