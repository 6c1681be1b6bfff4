"""analyze and prune: the one-call entry points."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from torch import nn

from .analyses import (
    ANALYSES,
    BASELINES,
    CRITERIA,
    MATRIX_PREFERENCE,
    ORDER,
    Context,
    Result,
    needed_for,
)
from .data import as_batches, split_batch
from .errors import InputError
from .graph import trace
from .graph.trace import unwrap
from .planner import Planner
from .report import Report, ReportData, agreement
from .report.graphdata import graph_data
from .score.engine import Engine
from .score.losses import LossSpec, resolve
from .solve import (
    DEFAULT_STRATEGY,
    FILLS,
    KINDS,
    STRATEGIES,
    Budget,
    check_budget,
    check_choice,
    check_strategy,
)


def _criteria(criteria: Sequence[str] | str) -> tuple[str, ...]:
    """The analyses asked for, validated (one name may be given as a string)."""
    criteria = (criteria,) if isinstance(criteria, str) else tuple(criteria)
    bad = [c for c in criteria if c not in ANALYSES]
    if bad:
        raise InputError(f"unknown criteria {bad}; choose from {list(ANALYSES)}")
    return criteria


def criteria_for(criterion: str, strategy: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``analyze`` criteria a plan by ``criterion`` and ``strategy`` needs (plus ``extra``)."""
    needs = list(extra)
    if criterion in CRITERIA and needed_for(criterion):
        needs.append(needed_for(criterion))
    if STRATEGIES[strategy].needs == "matrix" and not set(MATRIX_PREFERENCE) & set(needs):
        needs.append(MATRIX_PREFERENCE[0])
    return tuple(dict.fromkeys(needs)) or ("flow",)


def analyze(
    model: nn.Module,
    data: Any,
    *,
    loss: LossSpec = "distill",
    criteria: Sequence[str] = ("flow", "loss", "taylor2"),
    example_inputs: Any = None,
    num_samples: int | None = None,
    progress: bool = True,
    seed: int = 0,
    _check: Callable[[Any, list], None] | None = None,
) -> Report:
    """Score every removal candidate of ``model`` on the calibration ``data``.

    ``data``: an iterable of batches (tensors, ``(inputs, labels)`` tuples or dicts), a DataLoader or a
    ``datasets.Dataset``.  ``criteria``: "flow" (one forward: flow, energy, proximity, llmdrop,
    angular, shortgpt), "loss" (exact ablation with replay: loss, kl, spvr), "taylor1", "taylor2"
    (exact gate Hessian), "taylor2_diag" (Hutchinson diagonal), "fisher".  Magnitude and random
    baselines are always added.  The model is left as it was.

    >>> report = flowprune.analyze(model, [batch1, batch2], loss="lm")
    >>> print(report.to_markdown())
    """
    criteria = _criteria(criteria)
    resolve(loss)  # an unknown loss name fails here, before any work
    model = unwrap(model)  # torch.compile / DataParallel / DDP: score the module inside
    batches = as_batches(data, num_samples)
    x = example_inputs if example_inputs is not None else split_batch(batches[0])[0]
    if isinstance(x, Mapping):  # trace the forward that will be scored (e.g. without a KV cache)
        x = {**Engine.extra_kwargs(model), **x}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    graph = trace(model, x)
    timings["trace"] = time.perf_counter() - t
    eng = Engine(graph, batches, loss, progress=progress)
    ctx = Context(seed=seed)
    with eng:
        eng.gates.check = False  # checked once on entry; later entries (plans) skip it
        if _check is not None:  # prune's budget, checked on the candidates before any scoring
            _check(graph, eng.candidates)
        results = _run_analyses(eng, criteria, ctx, timings)
    results["baselines"] = BASELINES.run(eng, ctx)
    matrix = next(
        (a for a in MATRIX_PREFERENCE if a in results), None
    )  # documented preference order
    g = (
        results[matrix].g
        if matrix
        else next((r.g for r in results.values() if r.g is not None), None)
    )
    H = results[matrix].H if matrix else None
    names, rows = _rows(eng.candidates, results)
    data = ReportData(
        model_class=type(model).__name__,
        fingerprint=graph.fingerprint,
        loss=loss if isinstance(loss, str) else "callable",
        base_loss=ctx.base_loss,
        num_samples=sum(eng.sizes),
        total_params=graph.total_params,
        total_flops=graph.total_flops,
        criteria=names,
        rank_by="loss" if "loss" in names else (names[0] if names else None),
        candidates=rows,
        fidelity=agreement(rows, names),
        g=None if g is None else g.tolist(),
        H=None if H is None else H.tolist(),
        hessian_kind=matrix,
        dropped=dict(eng.gates.failed),
        timings=timings,
        graph=graph_data(graph, eng.candidates, ctx.graph_flow),
    )
    return Report(data, Planner(eng, data))


def _run_analyses(
    eng: Engine, criteria: Sequence[str], ctx: Context, timings: dict
) -> dict[str, Result]:
    """Run the requested analyses in the registry's order (added ones last), timing each.  Flow goes
    first: its pass also records the reference outputs; then the outputs and base loss are checked."""

    def run(name: str) -> None:
        t0 = time.perf_counter()
        results[name] = ANALYSES[name].run(eng, ctx)
        timings[name] = time.perf_counter() - t0

    results: dict[str, Result] = {}
    todo = [a for a in ORDER if a in criteria] + [a for a in criteria if a not in ORDER]
    if "flow" in todo:
        run("flow")
    # the base loss from the references (no second pass); NaN/inf: an error naming the batch
    ctx.base_loss = eng.check_finite()
    for name in todo:
        if name != "flow":
            run(name)
    return results


def _rows(cands: list, results: dict[str, Result]) -> tuple[list[str], list[dict]]:
    """(criteria with at least one finite value, in registry order; one row per candidate, ranked by the
    exact loss when it was computed, least important first)."""
    cols: dict[str, dict[str, float]] = {c.id: {} for c in cands}
    for res in results.values():
        for cand_id, v in res.columns.items():
            cols[cand_id].update(v)
    names = [n for n in CRITERIA if cands and n in cols[cands[0].id]]
    names = [
        n for n in names if not all(math.isnan(cols[c.id][n]) for c in cands)
    ]  # e.g. kl without logits
    primary = "loss" if "loss" in names else (names[0] if names else None)
    order = sorted(cands, key=lambda c: cols[c.id][primary]) if primary else cands
    rank = {c.id: i + 1 for i, c in enumerate(order)}
    rows = [
        {
            "id": c.id,
            "kind": c.kind,
            "path": c.path,
            "params": c.params,
            "flops": c.flops,
            **{n: cols[c.id].get(n) for n in names},
            "rank": rank[c.id],
        }
        for c in cands
    ]
    return names, rows


def prune(
    model: nn.Module,
    data: Any,
    budget: Budget | float | int | dict,
    *,
    criterion: str = "loss",
    strategy: str = DEFAULT_STRATEGY,
    loss: LossSpec = "distill",
    fill: str = "zeros",
    kind: str = "all",
    criteria: Sequence[str] = (),
    num_samples: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, Report]:
    """Analyze, plan under ``budget`` and rewrite: returns (pruned copy of ``model``, report).
    ``fill``: what replaces removed branches ("zeros", "mean", "linear": fitted on ``data``); ``kind``:
    "all", "branch" (sublayers only) or "layer"; ``criteria``: more analyses for the report beyond what
    ``criterion`` needs.  The report's last plan holds the predicted and measured ΔL, and
    ``measured_rewritten``: the loss change of the returned model itself; the Plan applied is
    ``pruned.flowprune_plans[-1]``.

    >>> small, report = flowprune.prune(model, batches, Budget(count=2))
    """
    # every choice is checked before any work; the budget once the candidates are known
    budget = Budget.parse(budget)
    check_choice("fill", fill, FILLS)
    check_choice("kind", kind, KINDS)
    check_strategy(
        strategy, criterion, tuple(CRITERIA), criterion if criterion in MATRIX_PREFERENCE else None
    )
    extra = _criteria(criteria)

    def check(graph, cands) -> None:
        kept = [c for c in cands if kind == "all" or c.kind == kind]
        if cands and not kept:
            raise InputError(
                f"{type(model).__name__} has no {kind!r} candidates (it has "
                f"{sorted({c.kind for c in cands})}): pass kind='all'"
            )
        check_budget(graph, kept, budget, fill)

    report = analyze(
        model,
        data,
        loss=loss,
        criteria=criteria_for(criterion, strategy, extra),
        num_samples=num_samples,
        progress=progress,
        _check=check,
    )
    if kind != "all":
        report.restrict(kind)
    plan = report.plan(budget, criterion=criterion, strategy=strategy, fill=fill)
    pruned = report.planner.rewrite(plan)
    report.plans[-1].measured_rewritten = report.planner.measure_model(pruned)
    report.record_latency(pruned)
    return pruned, report
