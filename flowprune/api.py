"""analyze and prune: the one-call entry points."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from torch import nn

from ._version import __version__
from .data import as_batches, split_batch
from .errors import InputError
from .graph import trace
from .graph.trace import unwrap
from .plan import fingerprint
from .report import SCHEMA, Report, agreement
from .report.graphdata import graph_data
from .rewrite import apply
from .score.engine import Engine
from .score.losses import LossSpec, resolve
from .solve import FILLS, HESSIANS, KINDS, Budget, check_budget, check_choice, check_strategy

CRITERIA = ("flow", "loss", "taylor1", "taylor2", "taylor2_diag", "fisher")
# which analysis computes each ranking column
SOURCE = {"loss": "loss", "kl": "loss", "spvr": "loss", "taylor1": "taylor1", "taylor2": "taylor2",
          "taylor2_diag": "taylor2_diag", "fisher": "fisher", "flow": "flow", "energy": "flow",
          "proximity": "flow", "llmdrop": "flow", "angular": "flow", "shortgpt": "flow"}


# every column a report can rank by: the analyses' columns and the free baselines
COLUMNS = tuple(SOURCE) + ("magnitude", "random")


def _criteria(criteria: Sequence[str] | str) -> tuple[str, ...]:
    """The analyses asked for, validated (one name may be given as a string)."""
    criteria = (criteria,) if isinstance(criteria, str) else tuple(criteria)
    bad = [c for c in criteria if c not in CRITERIA]
    if bad:
        raise InputError(f"unknown criteria {bad}; choose from {list(CRITERIA)}")
    return criteria


def criteria_for(criterion: str, strategy: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``analyze`` criteria a plan by ``criterion`` and ``strategy`` needs (plus ``extra``)."""
    needs = list(extra) + ([SOURCE[criterion]] if criterion in SOURCE else [])
    if strategy == "quadratic" and not set(HESSIANS) & set(needs):
        needs.append("taylor2")
    return tuple(dict.fromkeys(needs)) or ("flow",)


def analyze(model: nn.Module, data: Any, *, loss: LossSpec = "distill",
            criteria: Sequence[str] = ("flow", "loss", "taylor2"), example_inputs: Any = None,
            num_samples: int | None = None, progress: bool = True, seed: int = 0,
            _check: Callable[[Any, list], None] | None = None) -> Report:
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
    from .flow import information_flow
    from .score.ablation import ablate
    from .score.baselines import magnitude, random_scores
    from .score.taylor import fisher, gradient_and_hessian

    model = unwrap(model)  # torch.compile / DataParallel / DDP: score the module inside
    batches = as_batches(data, num_samples)
    x = example_inputs if example_inputs is not None else split_batch(batches[0])[0]
    extra = Engine.extra_kwargs(model)
    if isinstance(x, Mapping):  # trace the forward that will be scored (e.g. without a KV cache)
        x = {**extra, **x}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    graph = trace(model, x)
    timings["trace"] = time.perf_counter() - t
    eng = Engine(graph, batches, loss, progress=progress)
    g = H = None
    hessian_kind = None
    with eng:
        eng.gates.check = False  # checked once on entry; later entries (plans) skip it
        cands = eng.candidates
        if _check is not None:  # prune's budget, checked on the candidates before any scoring
            _check(graph, cands)
        cols: dict[str, dict[str, float]] = {c.id: {} for c in cands}

        def stage(name: str, fn):
            t0 = time.perf_counter()
            res = fn()
            timings[name] = time.perf_counter() - t0
            return res

        flows: dict = {}
        if "flow" in criteria:
            for cid, v in stage("flow", lambda: information_flow(eng, flows)).items():
                cols[cid].update(v)
        eng.check_finite()  # NaN/inf in an output or loss: an error naming the batch, before any score
        base = eng.loss()
        if "loss" in criteria:
            for cid, v in stage("loss", lambda: ablate(eng, base_loss=base)).items():
                cols[cid].update(v)
        kinds = {"taylor2": "full", "taylor2_diag": "diag", "taylor1": "none"}
        for want in [c for c in ("taylor2", "taylor2_diag", "taylor1") if c in criteria]:
            gw, Hw = stage(want, lambda: gradient_and_hessian(eng, hessian=kinds[want], seed=seed))
            for k, c in enumerate(cands):
                cols[c.id]["taylor1"] = float(-gw[k])
                if Hw is not None:
                    cols[c.id][want] = float(-gw[k] + 0.5 * Hw[k, k])
            if g is None or (H is None and Hw is not None) or want == "taylor2":
                g, H = gw, Hw
                hessian_kind = want if Hw is not None else None
        if "fisher" in criteria:
            gf, Fm = stage("fisher", lambda: fisher(eng, seed=seed))
            for k, c in enumerate(cands):
                cols[c.id]["fisher"] = float(-gf[k] + 0.5 * Fm[k, k])
            if H is None:
                g, H, hessian_kind = gf, Fm, "fisher"
    for cid, v in magnitude(graph, cands).items():
        cols[cid]["magnitude"] = v
    for cid, v in random_scores(cands, seed).items():
        cols[cid]["random"] = v
    names = [k for k in cols[cands[0].id]] if cands else []
    names = [n for n in names if not all(math.isnan(cols[c.id][n]) for c in cands)]  # e.g. kl without logits
    primary = "loss" if "loss" in names else (names[0] if names else None)
    order = sorted(cands, key=lambda c: cols[c.id][primary]) if primary else cands
    rank = {c.id: i + 1 for i, c in enumerate(order)}
    rows = [{"id": c.id, "kind": c.kind, "path": c.path, "params": c.params, "flops": c.flops,
             **{n: cols[c.id].get(n) for n in names}, "rank": rank[c.id]} for c in cands]
    data = {"schema": SCHEMA, "version": __version__, "model_class": type(model).__name__,
            "fingerprint": fingerprint(model), "loss": loss if isinstance(loss, str) else "callable",
            "base_loss": base, "num_samples": sum(eng.sizes), "total_params": graph.total_params,
            "total_flops": graph.total_flops, "criteria": names, "rank_by": primary, "candidates": rows,
            "fidelity": agreement(rows, names), "g": None if g is None else g.tolist(),
            "H": None if H is None else H.tolist(), "hessian_kind": hessian_kind, "plans": [],
            "dropped": dict(eng.gates.failed), "timings": timings, "curves": [],
            "graph": graph_data(graph, cands, flows)}
    return Report(data, eng)


def prune(model: nn.Module, data: Any, budget: Budget | float | int | dict, *, criterion: str = "loss",
          strategy: str = "greedy", loss: LossSpec = "distill", fill: str = "zeros", kind: str = "all",
          criteria: Sequence[str] = (), num_samples: int | None = None,
          progress: bool = True) -> tuple[nn.Module, Report]:
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
    check_strategy(strategy, criterion, COLUMNS, criterion if criterion in HESSIANS else None)
    extra = _criteria(criteria)

    def check(graph, cands) -> None:
        kept = [c for c in cands if kind == "all" or c.kind == kind]
        if cands and not kept:
            raise InputError(f"{type(model).__name__} has no {kind!r} candidates (it has "
                             f"{sorted({c.kind for c in cands})}): pass kind='all'")
        check_budget(graph, kept, budget, fill)

    report = analyze(model, data, loss=loss, criteria=criteria_for(criterion, strategy, extra),
                     num_samples=num_samples, progress=progress, _check=check)
    if kind != "all":
        report.restrict(kind)
    plan = report.plan(budget, criterion=criterion, strategy=strategy, fill=fill)
    pruned = apply(model, plan, data=report._engine.batches)
    report.plans[-1]["measured_rewritten"] = report.measure_model(pruned)
    report.record_latency(pruned)
    return pruned, report

