"""apply / apply_: make a Plan's removals physical."""

from __future__ import annotations

import copy
import difflib
from typing import Any

import torch
from torch import nn

from ..adapters import cache_slot, renumber, sync_config
from ..data import as_batches
from ..errors import InputError, PlanError
from ..graph.trace import unwrap
from ..plan import Plan, Replacement, fingerprint
from .calls import install_call_reset, install_skip, positions
from .fill import fit_fills
from .shadow import shadow_of
from .stubs import Removed
from .widths import apply_slices_, check_slices


def _resolve(model: nn.Module, path: str, modules: dict[str, nn.Module]) -> tuple[nn.Module, str]:
    if path not in modules:
        close = difflib.get_close_matches(path, list(modules), n=3)
        raise PlanError(
            f"the plan removes module '{path}', which this model does not have"
            + (f" (close: {close})" if close else "")
            + "; was the plan made for another model?"
        )
    parent, _, name = path.rpartition(".")
    return modules[parent], name


def _check_data(plan: Plan, data: Any) -> None:
    if plan.compensation != "none" and data is None:
        raise PlanError(
            f"the plan refits the consumers of removed units with compensation="
            f"'{plan.compensation}', fitted on calibration data: pass data=batches"
        )
    if plan.fills and data is None:
        raise PlanError(
            f"the plan compensates removed branches with fill='{plan.fills[0].mode}', fitted on "
            f"calibration data: pass data=batches (the batches given to analyze)"
        )


def apply_(model: nn.Module, plan: Plan, check: bool = True, data: Any = None) -> nn.Module:
    """Rewrite ``model`` in place so that the plan's removals are physically gone; returns ``model``.

    ``data``: calibration batches, needed when the plan has ``mean``/``linear`` compensation fills
    (fitted on the model before it is rewritten).  ``check=False`` skips the fingerprint check (for a
    model whose state_dict names were changed on purpose).  Raises PlanError for a plan made for another
    model or naming a missing module.  A wrapper (``torch.compile``, ``DataParallel``, DDP) is unwrapped:
    its inner module is rewritten in place and returned (wrap it again to compile or parallelise).
    """
    model = unwrap(model)
    _check_plan(model, plan, check, "apply_")
    # 1. validate the whole plan and build every stub; the model is not changed until all of it works
    modules = dict(model.named_modules())
    targets = [(r, *_resolve(model, r.path, modules)) for r in plan.replacements]
    _check_data(plan, data)
    check_slices(model, plan)
    deletions: dict[str, list[int]] = {}
    for rep, parent, name in targets:
        if rep.mode == "delete":
            if not isinstance(parent, nn.ModuleList) or not name.isdigit():
                raise PlanError(f"cannot delete '{rep.path}': its parent is not a layer list")
            deletions.setdefault(rep.path.rpartition(".")[0], []).append(int(name))
    fitted = fit_fills(model, plan, as_batches(data)) if plan.fills else {}
    stubbed = [
        (rep, parent, name)
        for rep, parent, name in targets
        if rep.mode != "delete" and not _skips(rep)
    ]
    swaps = [
        (
            parent,
            name,
            getattr(parent, name),
            make_stub(rep, getattr(parent, name), fitted.get(rep.path)),
        )
        for rep, parent, name in stubbed
    ]
    # a module removed in every call goes wherever the model holds it (a list may hold it twice, two
    # blocks may share it): its gate hooked the module object, so every holder saw the removal
    swaps += [
        (p, n, old, stub)
        for (parent, name, old, stub) in list(swaps)
        for p, n in positions(model, old)
        if not (p is parent and n == name)
    ]
    # a shared module that keeps some calls stays, and skips the others itself (see calls.py)
    skips = [(getattr(parent, name), rep) for rep, parent, name in targets if _skips(rep)]
    # 2. commit: channel slices (validated above), stubs in (undone if anything fails), then layer
    # deletions with the config kept in sync
    apply_slices_(model, plan, as_batches(data) if plan.compensation != "none" else None)
    _swap_in(swaps, skips)
    for stack_path, idx in deletions.items():
        stack = modules[stack_path]
        old_len = len(stack)
        for i in sorted(idx, reverse=True):
            del stack[i]
        sync_config(
            model, stack_path, idx, old_len
        )  # a list the config does not count leaves it alone
        renumber(stack, model)
    install_call_reset(model)  # modules that skip calls count them per forward of the root
    model.flowprune_plans = list(getattr(model, "flowprune_plans", [])) + [plan]
    return model


def _check_plan(model: nn.Module, plan: Any, check: bool, fn: str) -> None:
    """PlanError/InputError unless ``plan`` is a Plan made for ``model`` and not applied to it yet."""
    if not isinstance(plan, Plan):
        raise InputError(
            f"{fn} takes a flowprune.Plan, got {type(plan).__name__}: make one with graph.plan(ids) "
            f"or report.plan(budget), or read one with Plan.from_json(path)"
        )
    if plan in getattr(model, "flowprune_plans", []):
        raise PlanError("this plan was already applied to this model (see model.flowprune_plans)")
    if check and fingerprint(model) != plan.fingerprint:
        n = sum(p.numel() for p in model.parameters())
        raise PlanError(
            f"the plan was made for a {plan.model_class} with {plan.params_before:,} parameters "
            f"(fingerprint {plan.fingerprint}); this is a {type(model).__name__} with {n:,} parameters "
            f"(fingerprint {fingerprint(model)}). Trace this model and make a new plan, or pass "
            f"check=False if only parameter names changed."
        )


def _swap_in(swaps: list, skips: list) -> None:
    """Put the stubs in and make shared modules skip their removed calls; undo all of it if one fails."""
    done, forwards = [], []
    try:
        for parent, name, old, stub in swaps:
            setattr(parent, name, stub)
            done.append((parent, name, old))
        for module, rep in skips:
            forwards.append((module, vars(module).get("forward")))
            make_stub(rep, module)
    except BaseException:
        for module, own in reversed(forwards):
            if own is None:
                vars(module).pop("forward", None)
            else:
                module.forward = own
        for parent, name, old in reversed(done):
            setattr(parent, name, old)
        raise


def _skips(rep: Replacement) -> bool:
    return rep.calls is not None and not rep.every_call


def make_stub(
    rep: Replacement, original: nn.Module | None, fitted: dict | None = None
) -> nn.Module:
    """The module standing in for ``rep.path`` (``fitted`` fill values, if any, loaded into it): a
    ``Removed`` stub; for a per-call replacement that keeps some calls, ``original`` itself, made to skip
    the removed calls (``calls.install_skip``)."""
    if _skips(rep):
        install_skip(original, rep.calls, rep.ncalls or 0, rep.structure)
        return original
    structure = rep.structure
    fill = "zeros" if rep.mode == "identity" else rep.mode
    stub = Removed(
        structure,
        type(original).__name__ if original is not None else "",
        fill,
        rep.out_index,
        cache_slot(original),
        fill_shape=rep.shape if fill == "mean" else None,
        linear=tuple(rep.shape) if fill == "linear" else None,
    )
    stub.shadow = shadow_of(original, rep.path)  # what parents may still read of the original
    if original is not None:
        p = next(original.parameters(), None)
        if p is not None:
            stub.to(device=p.device, dtype=p.dtype if fill == "linear" else None)
    if fitted:
        with torch.no_grad():
            if fill == "mean":
                stub.fill.copy_(fitted["fill"])
            else:
                stub.linear.weight.copy_(fitted["weight"])
                stub.linear.bias.copy_(fitted["bias"])
    return stub


def apply(model: nn.Module, plan: Plan, check: bool = True, data: Any = None) -> nn.Module:
    """A pruned copy of ``model``; the argument is left untouched.  For a ``torch.compile``d or
    ``DataParallel``/DDP model the copy is of the module inside, a plain module: wrap it again.

    >>> small = flowprune.apply(model, graph.plan(["model.layers.2:layer"]))
    >>> small = flowprune.apply(model, graph.plan(ids, fill="mean"), data=batches)
    """
    if not isinstance(plan, Plan):  # before copying a possibly large model
        _check_plan(model, plan, False, "apply")
    _check_data(plan, data)
    small = copy.deepcopy(unwrap(model))  # a compiled / DataParallel model gives a plain module
    for m in small.modules():  # a copy made inside `with Gates(...)` must not stay gated
        for key in [
            k for k, fn in m._forward_hooks.items() if getattr(fn, "_flowprune_gate", False)
        ]:
            del m._forward_hooks[key]
            m._forward_hooks_with_kwargs.pop(key, None)
            m._forward_hooks_always_called.pop(key, None)
        for key in [
            k for k, fn in m._forward_pre_hooks.items() if getattr(fn, "_flowprune_gate", False)
        ]:
            del m._forward_pre_hooks[key]  # per-call gates count calls with pre-hooks
            m._forward_pre_hooks_with_kwargs.pop(key, None)
    return apply_(small, plan, check=check, data=data)
