"""The registry of analyses and the criteria (report columns) they compute: one home for every name.

An *analysis* is what ``analyze(criteria=...)`` runs (one forward for ``flow``, C suffix passes for
``loss``, HVPs for ``taylor2``, ...); each fills one or more *criteria* (columns of the report, every one
oriented "higher = more important").  ``analyze``, the CLI's choices and help, the report's legend and
every validation derive from ``ANALYSES`` and ``CRITERIA``.  Adding a criterion is one ``Analysis``
entry (or one more column of an existing one) plus its runner function::

    def run_snip(eng, ctx):                       # ctx: Context (seed, base loss, flow graph store)
        return Result({c.id: {"snip": ...} for c in eng.candidates})

    ANALYSES["snip"] = Analysis("snip", run_snip, "|α·∂L/∂α| (SNIP)", {"snip": "connection sensitivity"})

The gate-space matrix that ``quadratic`` plans with and ``report.predict`` uses is taken from the first
computed analysis in ``MATRIX_PREFERENCE``: the exact Hessian, then the Fisher (a full matrix, so it
keeps the interactions), then the Hutchinson diagonal (no interactions).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .score.engine import Engine


@dataclass
class Context:
    """What runners share: the seed, the base (α = 1) calibration loss, and where ``flow`` leaves the
    per-vertex/edge flow for the report's graph."""

    seed: int = 0
    base_loss: float = 0.0
    graph_flow: dict = field(default_factory=dict)


@dataclass
class Result:
    """Columns per candidate id, and optionally the gate gradient g [C] and a matrix H [C, C]."""

    columns: dict[str, dict[str, float]]
    g: torch.Tensor | None = None
    H: torch.Tensor | None = None


@dataclass(frozen=True)
class Analysis:
    """One analysis: its runner, a one-line description and cost, and the columns it fills
    ({name: description})."""

    name: str
    run: Callable[["Engine", Context], Result]
    description: str
    columns: dict[str, str]


@dataclass(frozen=True)
class Criterion:
    """A column of the report: its name, the analysis that computes it, what it means.  Every
    criterion is oriented "higher = more important" (removed last)."""

    name: str
    analysis: str
    description: str


def _taylor_columns(eng: "Engine", name: str, g: torch.Tensor, H: torch.Tensor | None) -> Result:
    cols = {}
    for k, c in enumerate(eng.candidates):
        cols[c.id] = {"taylor1": float(-g[k])}
        if H is not None:
            # −g_c + ½H_cc: the removal's prediction
            cols[c.id][name] = float(-g[k] + 0.5 * H[k, k])
    return Result(cols, g, H)


def run_flow(eng: "Engine", ctx: Context) -> Result:
    from .flow import information_flow

    return Result(information_flow(eng, ctx.graph_flow))


def run_loss(eng: "Engine", ctx: Context) -> Result:
    from .score.ablation import ablate

    return Result(ablate(eng, base_loss=ctx.base_loss))


def _run_taylor(kind: str, name: str) -> Callable[["Engine", Context], Result]:
    def run(eng: "Engine", ctx: Context) -> Result:
        from .score.taylor import gradient_and_hessian

        g, H = gradient_and_hessian(eng, hessian=kind, seed=ctx.seed)
        return _taylor_columns(eng, name, g, H)

    return run


def run_fisher(eng: "Engine", ctx: Context) -> Result:
    from .score.taylor import fisher

    g, F = fisher(eng, seed=ctx.seed)
    res = _taylor_columns(eng, "fisher", g, F)
    for v in res.columns.values():  # taylor1 belongs to the gradient analyses
        v.pop("taylor1")
    return res


def run_baselines(eng: "Engine", ctx: Context) -> Result:
    from .score.baselines import magnitude, random_scores

    mag, rnd = magnitude(eng.graph, eng.candidates), random_scores(eng.candidates, ctx.seed)
    return Result({c.id: {"magnitude": mag[c.id], "random": rnd[c.id]} for c in eng.candidates})


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis(
            "flow",
            run_flow,
            "one forward with streaming statistics",
            {
                "flow": "share of the output's energy that flows through it (propagated along the DAG)",
                "energy": "‖z‖²/‖y‖² at its merge",
                "proximity": "max(0, ‖y‖₁ − ‖y − z‖₁), normalised over the merge's inputs",
                "llmdrop": "LLM-Drop 1 − cos(x, x + f(x))",
                "angular": "arccos(cos(x, x + f(x)))/π",
                "shortgpt": "ShortGPT block influence 1 − cos(in, out) of the enclosing layer",
            },
        ),
        Analysis(
            "loss",
            run_loss,
            "exact ablation with replay: C suffix passes",
            {
                "loss": "exact ΔL of removing the candidate alone (calibration loss)",
                "kl": "exact KL(original ‖ ablated) per token/sample",
                "spvr": "SPvR: flipped argmax + |Δp| of the originally predicted class, summed over samples",
            },
        ),
        Analysis(
            "taylor1",
            _run_taylor("none", "taylor1"),
            "gate gradient: one backward",
            {"taylor1": "first-order Taylor prediction −g"},
        ),
        Analysis(
            "taylor2",
            _run_taylor("full", "taylor2"),
            "exact gate Hessian: C HVPs",
            {
                "taylor1": "first-order Taylor prediction −g",
                "taylor2": "second-order prediction −g + ½H_cc (exact gate Hessian)",
            },
        ),
        Analysis(
            "taylor2_diag",
            _run_taylor("diag", "taylor2_diag"),
            "Hutchinson diag(H): min(16, C) HVPs",
            {
                "taylor1": "first-order Taylor prediction −g",
                "taylor2_diag": "second-order prediction with a Hutchinson estimate of diag(H)",
            },
        ),
        Analysis(
            "fisher",
            run_fisher,
            "Fisher matrix from per-sample gradients",
            {"fisher": "second-order prediction −g + ½F_cc (Fisher)"},
        ),
    )
}
# free, always computed (not an ``analyze(criteria=...)`` choice)
BASELINES = Analysis(
    "baselines",
    run_baselines,
    "weights and a seed",
    {"magnitude": "RMS of the weights the removal deletes", "random": "uniform random (seeded)"},
)
# the order analyses run in (flow's pass also records the references the others compare against)
ORDER = ("flow", "loss", "taylor2", "taylor2_diag", "taylor1", "fisher")
# which computed matrix the quadratic strategy and report.predict use, best first
MATRIX_PREFERENCE = ("taylor2", "fisher", "taylor2_diag")


class _Columns(Mapping):
    """Every criterion, derived from ``ANALYSES`` on each look-up (so one added analysis is enough)."""

    def _all(self) -> dict[str, Criterion]:
        out: dict[str, Criterion] = {}
        for a in (*ANALYSES.values(), BASELINES):
            for name, desc in a.columns.items():
                out.setdefault(name, Criterion(name, a.name, desc))
        return out

    def __getitem__(self, name: str) -> Criterion:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class _Descriptions(Mapping):
    def __getitem__(self, name: str) -> str:
        return CRITERIA[name].description

    def __iter__(self) -> Iterator[str]:
        return iter(CRITERIA)

    def __len__(self) -> int:
        return len(CRITERIA)


CRITERIA: Mapping[str, Criterion] = _Columns()
DESCRIPTIONS: Mapping[str, str] = _Descriptions()


def needed_for(criterion: str) -> str | None:
    """The analysis that computes ``criterion`` (None for the free baselines)."""
    a = CRITERIA[criterion].analysis
    return None if a == BASELINES.name else a
