"""Slicing a plan's channel units, and keeping a Hugging Face config describing the sliced model.

When every layer keeps the same width (MLP neurons, heads), the config's ``intermediate_size`` / head
counts are set so that plain ``from_pretrained`` rebuilds the model; the new config is accepted only if
a model built from it (on the meta device, no memory) has exactly the sliced model's shapes.  Otherwise
the config is left alone and ``load_pretrained`` replays the plan's slices.

>>> apply_slices_(model, plan)   # in place; the config is synced when it can describe the result
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..adapters import adapter_for
from ..channels import slice_
from ..errors import PlanError
from ..plan import Plan


def check_slices(model: nn.Module, plan: Plan) -> None:
    """PlanError unless every slice names a tensor of ``model`` and valid indices."""
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    for s in plan.slices:
        t = state.get(s.param)
        if t is None:
            raise PlanError(f"the plan slices '{s.param}', which this model does not have")
        if not 0 <= s.dim < t.dim() or any(not 0 <= k < t.shape[s.dim] for k in s.keep):
            raise PlanError(
                f"the plan keeps indices {list(s.keep)[:5]}... of dim {s.dim} of '{s.param}' "
                f"(shape {tuple(t.shape)}): was it made for another model?"
            )


def apply_slices_(model: nn.Module, plan: Plan, batches: list | None = None) -> None:
    """Slice the plan's units out of ``model`` in place, refit the consumers of removed units when
    the plan says so (on ``batches``, through the model as it was), and sync the config where it can
    say the new widths."""
    if not plan.slices:
        return
    new = _compensate(model, plan, batches) if plan.compensation != "none" else {}
    slice_(
        model,
        [(s.param, s.dim, s.keep) for s in plan.slices],
        [(a.module, a.attr, a.value) for a in plan.attrs],
    )
    if new:
        state = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in new.items():
                state[name].copy_(t)
    sync_widths(model, plan)


def _compensate(model: nn.Module, plan: Plan, batches: list | None) -> dict[str, torch.Tensor]:
    """Refitted consumer weights, already cut to the plan's kept rows and columns."""
    from ..channels.compensate import _kind, _module_of, compensated, consumer_stats

    if batches is None:
        raise PlanError(
            f"the plan refits consumers with compensation={plan.compensation!r} on calibration "
            f"data: pass data=batches"
        )
    by_param: dict[str, list] = {}
    for s in plan.slices:
        by_param.setdefault(s.param, []).append(s)
    removed: dict[str, list[int]] = {}
    cdim: dict[str, int] = {}
    for name in plan.consumers:
        m, _ = _module_of(model, name)
        kind = _kind(m)
        if kind is None:
            continue
        d = 0 if kind == "conv1d_hf" else 1
        cut = [s for s in by_param.get(name, []) if s.dim == d]
        if cut:
            size = m.weight.shape[d]
            removed[name] = sorted(set(range(size)) - set(cut[0].keep))
            cdim[name] = d
    stats = consumer_stats(model, removed, batches)
    new = compensated(model, stats, removed, plan.compensation)
    out = {}
    for name, t in new.items():  # the other dims (a consumer's own removed rows, its bias) cut too
        for s in by_param.get(name, []):
            if name in cdim and s.dim == cdim[name]:
                continue
            t = t.index_select(s.dim, torch.as_tensor(s.keep, device=t.device))
        out[name] = t
    return out


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.state_dict(keep_vars=True).items()}


def _changes(model: nn.Module, plan: Plan) -> dict[str, Any]:
    """Config keys and values that would describe uniformly sliced widths."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    ad = adapter_for(model)
    out: dict[str, Any] = {}
    inter = ad.value(config, ad.intermediate)
    widths = {u.of - len(u.units) for u in plan.units if u.kind == "channels" and u.of == inter}
    if isinstance(inter, int) and len(widths) == 1:
        out[ad.intermediate] = widths.pop()
    heads, kv = ad.num_heads(config), ad.num_kv_heads(config)
    kept = {u.of - len(u.units) for u in plan.units if u.kind == "heads" and u.of == kv}
    if isinstance(heads, int) and isinstance(kv, int) and len(kept) == 1:
        k = kept.pop()
        hidden = ad.value(config, ad.hidden)
        head_dim = ad.value(config, ad.head_dim) or getattr(config, "head_dim", None)
        if head_dim is None and isinstance(hidden, int):
            head_dim = hidden // heads
        out[ad.heads] = heads // kv * k
        if ad.kv_heads and getattr(config, ad.kv_heads, None) is not None:
            out[ad.kv_heads] = k
        if head_dim is not None:
            out["head_dim"] = head_dim
    return out


def sync_widths(model: nn.Module, plan: Plan) -> bool:
    """Set the config's widths when a model built from it has the sliced model's shapes; True if set."""
    changes = _changes(model, plan)
    if not changes:
        return False
    new = copy.deepcopy(model.config)
    for k, v in changes.items():
        setattr(new, k, v)
    try:
        with torch.device("meta"):
            built = type(model)._from_config(new)
    except Exception:  # noqa: BLE001 - a config the family cannot build is simply not used
        return False
    if _shapes(built) != _shapes(model):
        return False
    for k, v in changes.items():  # in place: submodules hold the same config object
        setattr(model.config, k, v)
    return True
