"""apply / apply_: make a Plan's removals physical."""

from __future__ import annotations

import copy
import difflib

from torch import nn

from ..adapters import num_layers, renumber, sync_config
from ..errors import PlanError
from ..plan import Plan, fingerprint
from .stubs import Removed


def _resolve(model: nn.Module, path: str, modules: dict[str, nn.Module]) -> tuple[nn.Module, str]:
    if path not in modules:
        close = difflib.get_close_matches(path, list(modules), n=3)
        raise PlanError(f"the plan removes module '{path}', which this model does not have"
                        + (f" (close: {close})" if close else "") + "; was the plan made for another model?")
    parent, _, name = path.rpartition(".")
    return modules[parent], name


def apply_(model: nn.Module, plan: Plan, check: bool = True) -> nn.Module:
    """Rewrite ``model`` in place so that the plan's removals are physically gone; returns ``model``.

    ``check=False`` skips the fingerprint check (for a model whose state_dict names were changed on
    purpose).  Raises PlanError for a plan made for another model or naming a missing module.
    """
    if check and fingerprint(model) != plan.fingerprint:
        n = sum(p.numel() for p in model.parameters())
        raise PlanError(f"the plan was made for a {plan.model_class} with {plan.params_before:,} parameters "
                        f"(fingerprint {plan.fingerprint}); this is a {type(model).__name__} with {n:,} parameters "
                        f"(fingerprint {fingerprint(model)}). Trace this model and make a new plan, or pass "
                        f"check=False if only parameter names changed.")
    modules = dict(model.named_modules())
    targets = [(r, *_resolve(model, r.path, modules)) for r in plan.replacements]  # validate all first
    deletions: dict[str, list[int]] = {}
    for rep, parent, name in targets:
        if rep.mode == "delete":
            if not isinstance(parent, nn.ModuleList) or not name.isdigit():
                raise PlanError(f"cannot delete '{rep.path}': its parent is not a layer list")
            deletions.setdefault(rep.path.rpartition(".")[0], []).append(int(name))
        else:
            setattr(parent, name, Removed(rep.structure, type(getattr(parent, name)).__name__))
    for stack_path, idx in deletions.items():
        stack = modules[stack_path]
        old_len = len(stack)
        for i in sorted(idx, reverse=True):
            del stack[i]
        if num_layers(model) == old_len:
            sync_config(model, idx, old_len)
        renumber(stack, model)
    model.flowprune_plans = list(getattr(model, "flowprune_plans", [])) + [plan]
    return model


def apply(model: nn.Module, plan: Plan, check: bool = True) -> nn.Module:
    """A pruned copy of ``model``; the argument is left untouched.

    >>> small = flowprune.apply(model, graph.plan(["model.layers.2:layer"]))
    """
    return apply_(copy.deepcopy(model), plan, check=check)
