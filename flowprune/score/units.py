"""Unit scores through the machinery that exists, and choosing units under a parameter budget.

Every score is an importance (higher = keep), in the units of a loss change where it estimates one:

* ``magnitude``/``l1``: Torch-Pruning's L2/L1 magnitude (``magnitude.py``), normalised per group;
* ``flow``: the unit's share of the energy entering its consumers, tr(W_Q H_QQ W_Qᵀ) / tr(W H Wᵀ) with
  H = E[x xᵀ] of each consumer's input (one pass, no gradient);
* ``obs``: the output error its consumers keep after the OBS refit, ½ tr(W_Q ((H⁻¹)_QQ)⁻¹ W_Qᵀ), summed
  over its consumers (the score that matches ``fill="obs"``);
* ``taylor``: |∂L/∂α_u| (one backward over the unit gates); ``taylor2``: −g_u + ½ H_uu (Hessian
  diagonal by Hutchinson probes); ``fisher``: ½ F_uu (per-sample gate gradients);
* ``loss``: the exact ΔL of masking the unit alone (one forward per unit); ``kl`` and ``spvr`` from the
  same forwards: KL of the original outputs to the masked ones, and SPvR's ranking function
  (misclassified samples + |Δp| of the originally predicted class, summed);
* ``random``: seeded.

Global ranking across groups (``select_budget``) divides each score by the parameters a unit saves, so
a head and a neuron compete per parameter; loss-scale scores are comparable across layers as they are,
magnitude is normalised by its group's mean first (Torch-Pruning's convention).

>>> scores = unit_scores(graph, batches, ["flow", "obs"], loss="distill")
>>> removed = select_budget(groups, scores["obs"], params=0.2 * graph.total_params)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from .._runtime import eval_mode
from ..channels import ChannelGroup, UnitGates, magnitude_scores
from ..channels.compensate import _kind, _module_of, _weight_2d, consumer_stats, obs_cost
from ..errors import InputError
from .ablation import ablate
from .engine import Engine
from .taylor import fisher, gradient_and_hessian

UNIT_CRITERIA = (
    "magnitude", "l1", "flow", "obs", "taylor", "taylor2", "fisher", "loss", "kl", "spvr", "random",
)  # fmt: skip
GRADIENT = ("taylor", "taylor2", "fisher", "loss", "kl", "spvr")
MAX_EXACT = 4096  # units the exact criterion ablates one by one before it refuses


def _consumers(groups: Sequence[ChannelGroup]) -> list[str]:
    return list(dict.fromkeys(m.param for g in groups for m in g.members if m.role == "consumer"))


def _stat_scores(model, groups, batches, which: str) -> dict[str, torch.Tensor]:
    stats = consumer_stats(model, _consumers(groups), batches)
    out = {}
    for g in groups:
        s = torch.zeros(g.units, dtype=torch.float64)
        for m in g.members:
            st = stats.get(m.param)
            if m.role != "consumer" or st is None:
                continue
            mod, _ = _module_of(model, m.param)
            W = _weight_2d(mod, _kind(mod))
            H = st.H / max(st.n, 1)
            data = W.shape[1] - (1 if st.bias else 0)
            Wd, Hd = W[:, :data], H[:data, :data]
            total = float(torch.trace(Wd @ Hd @ Wd.T)) or 1.0
            for u, chans in enumerate(m.index):
                if which == "obs":
                    s[u] += obs_cost(st, W, chans)
                else:
                    cols = [c * st.block + j for c in chans for j in range(st.block)]
                    WQ = Wd[:, cols]
                    s[u] += float(torch.trace(WQ @ Hd[cols][:, cols] @ WQ.T)) / total
        out[g.id] = s
    return out


def _gate_scores(graph, groups, batches, which: Sequence[str], loss: Any, seed: int) -> dict:
    gates = UnitGates(graph.model, groups)
    res: dict[str, torch.Tensor] = {}
    with Engine(graph, batches, loss, gates=gates, progress=False) as eng:
        if "taylor" in which or "taylor2" in which:
            hess = "diag" if "taylor2" in which else "none"
            g, H = gradient_and_hessian(eng, hessian=hess, probes=32, seed=seed)
            res["taylor"] = g.abs()
            if H is not None:
                res["taylor2"] = -g + 0.5 * torch.diagonal(H)
        if "fisher" in which:
            _, F = fisher(eng, seed=seed)
            res["fisher"] = 0.5 * torch.diagonal(F)
        exact = [c for c in ("loss", "kl", "spvr") if c in which]
        if exact:  # one forward per unit and batch (no replay for units)
            got = ablate(eng, replay=False, progress=False)
            for c in exact:
                res[c] = torch.tensor([got[u.id][c] for u in gates.candidates], dtype=torch.float64)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for crit, v in res.items():
        out[crit] = {g.id: v[gates.offsets[g.id] : gates.offsets[g.id] + g.units] for g in groups}
    return out


def unit_scores(
    graph: Any,
    batches: Sequence[Any],
    criteria: Iterable[str] = ("magnitude", "flow", "obs"),
    loss: Any = "distill",
    groups: Sequence[ChannelGroup] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{criterion: {group id: scores [units]}}`` for the prunable channel groups of ``graph`` (or
    ``groups``) on calibration ``batches`` (the model's own inputs; gradient criteria use ``loss`` as
    ``flowprune.analyze`` does)."""
    criteria = list(dict.fromkeys(criteria))
    bad = [c for c in criteria if c not in UNIT_CRITERIA]
    if bad:
        raise InputError(
            f"unknown unit criterion {bad[0]!r}; choose from {', '.join(UNIT_CRITERIA)}"
        )
    groups = list(groups if groups is not None else graph.channel_groups().prunable())
    model = graph.model
    out: dict[str, dict[str, torch.Tensor]] = {}
    batches = list(batches)
    with eval_mode(model):
        if "magnitude" in criteria:
            out["magnitude"] = magnitude_scores(model, groups, p=2)
        if "l1" in criteria:
            out["l1"] = magnitude_scores(model, groups, p=1)
        if "flow" in criteria:
            out["flow"] = _stat_scores(model, groups, batches, "flow")
        if "obs" in criteria:
            out["obs"] = _stat_scores(model, groups, batches, "obs")
    grads = [c for c in criteria if c in GRADIENT]
    units = sum(g.units for g in groups)
    exact = [c for c in criteria if c in ("loss", "kl", "spvr")]
    if exact and units > MAX_EXACT:
        raise InputError(
            f"criterion {exact[0]!r} runs one forward per unit, {units:,} here (more than {MAX_EXACT:,}): "
            f"score with 'obs' or 'taylor2', or pass groups=[...] to score fewer groups exactly"
        )
    if grads:
        out.update(_gate_scores(graph, groups, batches, grads, loss, seed))
    if "random" in criteria:
        gen = torch.Generator().manual_seed(seed)
        out["random"] = {
            g.id: torch.rand(g.units, generator=gen, dtype=torch.float64) for g in groups
        }
    return {c: out[c] for c in criteria}


def select_budget(
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    params: float,
    normalise: bool = False,
) -> dict[str, list[int]]:
    """Units to remove, lowest score per saved parameter first, until ``params`` parameters are
    removed; a group always keeps one unit.  ``normalise`` divides each group's scores by their mean
    (for magnitudes, whose scale differs per layer).

    >>> select_budget(groups, scores, params=10_000)
    {'fc1:channels': [3, 17, ...]}
    """
    cand = []
    for g in groups:
        s = scores.get(g.id)
        if s is None or not g.prunable:
            continue
        s = s.double()
        if normalise:
            s = s / s.mean().clamp_min(1e-30)
        for u in range(g.units):
            cand.append((float(s[u]) / max(g.params_per_unit, 1), g.id, u, g.params_per_unit))
    cand.sort()
    removed: dict[str, list[int]] = {}
    left = {g.id: g.units for g in groups}
    total = 0
    for _, gid, u, p in cand:
        if total >= params:
            break
        if left[gid] <= 1:
            continue
        removed.setdefault(gid, []).append(u)
        left[gid] -= 1
        total += p
    return {gid: sorted(us) for gid, us in removed.items()}


def select_obs_greedy(
    model: Any, groups: Sequence[ChannelGroup], batches: Sequence[Any], ratio: float
) -> dict[str, list[int]]:
    """``ratio`` of every group's units (Torch-Pruning's rounding: ``n - int(n (1 - ratio))``), chosen
    one at a time by OBS cost with the consumers' weights and H⁻¹ downdated after each choice
    (``channels.compensate.obs_greedy``): the selection that matches ``fill="obs"``.

    >>> removed = select_obs_greedy(model, groups, batches, 0.5)
    """
    from ..channels.compensate import obs_greedy

    groups = [g for g in groups if g.prunable]
    stats = consumer_stats(model, _consumers(groups), batches)
    counts = {g.id: min(g.units - int(g.units * (1 - ratio)), g.units - 1) for g in groups}
    return obs_greedy(model, groups, stats, counts)
