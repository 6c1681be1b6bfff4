"""What a report holds, typed: ``ReportData`` (the analysis: candidates' scores, agreement, Taylor terms,
graph, plans, curves) and ``PlanRecord`` (one plan made from it: the ``Plan`` itself with how it was
chosen and what it measured).  Both serialise to the versioned JSON schema ``REPORT_SCHEMA``.

Mapping-style reads (``data["criteria"]``, ``record["measured"]``) are kept for one release; new code
uses the attributes.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .._version import __version__
from ..errors import InputError, PlanError
from ..plan import Plan

# 1: scores, plans; 2: + graph (vertex and edge flow), loss curves, plan latency; 3: + each plan record
# carries its Plan
REPORT_SCHEMA = 3


class _Readable:
    """``obj["name"]`` and ``obj.get("name")`` read attributes (the dict interface of schema ≤ 2)."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)


@dataclass
class PlanRecord(_Readable):
    """One plan made from a report: its removals, how it was chosen, its predicted and measured ΔL
    (through the gates, zero fill), ``measured_rewritten`` (the rewritten model's, after ``prune``),
    ``latency`` ({"before", "after", "batch"} seconds, when measured) and the ``plan`` itself."""

    criterion: str | None
    strategy: str
    fill: str
    budget: dict
    removals: list[str]
    params_removed: int
    flops_removed: int
    predicted: float | None = None
    measured: float | None = None
    measured_rewritten: float | None = None
    latency: dict | None = None
    plan: Plan | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan"}
        d["plan"] = None if self.plan is None else self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PlanRecord":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("plan") is not None:
            d["plan"] = Plan.from_dict(d["plan"])
        return cls(**d)


@dataclass
class ReportData(_Readable):
    """Everything ``analyze`` found, and the plans and curves made since.  ``candidates`` are rows
    (dicts: id, kind, path, params, flops, one column per criterion, rank); ``g``/``H`` the gate-space
    gradient and matrix (``hessian_kind`` says which: taylor2, fisher or taylor2_diag)."""

    model_class: str
    loss: str
    base_loss: float
    num_samples: int
    total_params: int
    total_flops: int
    criteria: list[str]
    candidates: list[dict]
    fidelity: dict[str, dict[str, float]]
    fingerprint: str | None = None
    rank_by: str | None = None
    g: list[float] | None = None
    H: list[list[float]] | None = None
    hessian_kind: str | None = None
    plans: list[PlanRecord] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    graph: dict | None = None
    version: str = __version__
    schema: int = REPORT_SCHEMA

    def to_dict(self) -> dict:
        """The JSON form (plans as dicts)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plans"}
        d["plans"] = [p.to_dict() for p in self.plans]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ReportData":
        """Read and check the JSON form of any schema up to ``REPORT_SCHEMA``."""
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(d)) if isinstance(d, dict) else ["(not an object)"]
        if missing or not isinstance(d.get("schema"), int):
            raise InputError(
                f"this JSON is not a flowprune report (missing {missing or ['an integer schema']}): "
                f"pass the report.json that analyze, prune or Report.to_json wrote"
            )
        if d["schema"] > REPORT_SCHEMA:
            raise PlanError(
                f"report schema {d['schema']} is newer than this flowprune ({__version__}) reads: "
                f"upgrade flowprune"
            )
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["plans"] = [PlanRecord.from_dict(p) for p in d.get("plans") or []]
        kw["curves"] = d.get("curves") or []  # schema 1 had neither
        return cls(**kw)
