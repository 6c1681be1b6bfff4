"""Skipping some calls of a module called several times per forward (shared weights, ALBERT).

``SkipCalls`` is installed as the shared module's own ``forward`` (an instance attribute, as accelerate
does): it counts the module's calls within a forward; on the removed call indices it returns what the
gated model returns there (the input for a removed layer, zeros for a removed branch, in the module's
output structure), on the others it runs the module's forward.  The count restarts at every forward of
the root model through a forward pre-hook (``reset_calls``) that ``apply_`` and ``load_pretrained``
register, and wraps around after ``ncalls`` calls, so calling the shared module's parent directly works
too.

Why the module itself and not a wrapper module standing in for it: every call reaches it, also one that
the module makes of itself (``return self(y)``, re-entrant) and one through a second reference (a list
that holds it twice); its class, attributes, ``named_modules`` paths and state_dict keys stay exactly as
they were, so the checkpoint files are those of the unpruned model and ``load_pretrained`` rebuilds it
by replaying the plan.  ``copy.deepcopy`` copies the ``SkipCalls`` with its module (the memo keeps the
reference to the copy), the reset hook is a module-level function of the root it is called with, and
both pickle.

>>> layer = nn.Linear(4, 4)
>>> install_skip(layer, skip=[1], ncalls=3, structure={"t": "input"})
>>> x = torch.ones(2, 4)
>>> [torch.equal(layer(x), x) for _ in range(3)]
[False, True, False]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .._tree import decode, first_tensor


class SkipCalls:
    """The ``forward`` of a module whose calls ``skip`` (0-based, counted from the start of each
    forward of the root, modulo ``ncalls``) are removed: those return ``decode(structure, input)``."""

    def __init__(self, module: nn.Module, skip: Sequence[int], ncalls: int, structure: dict):
        self.module = module
        own = vars(module).get("forward")  # an instance-level forward already there (accelerate)
        self.run = own.run if isinstance(own, SkipCalls) else own
        self.skip = sorted({int(k) for k in skip})
        self.ncalls = int(ncalls)
        self.structure = structure
        self.count = 0

    @property
    def flowprune_skipped(self) -> tuple[int, ...]:
        """The skipped call indices (read by candidate discovery: they are not offered again)."""
        return tuple(self.skip)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        k = self.count % self.ncalls if self.ncalls > 0 else self.count
        self.count += 1  # at entry: a re-entrant call gets the next index, as in the trace
        if k in self.skip:
            m = self.module
            anchor = next(
                (
                    t
                    for t in list(m._parameters.values()) + list(m._buffers.values())
                    if t is not None
                ),
                None,
            )
            return decode(
                self.structure,
                first_tensor(args, kwargs),
                anchor if anchor is not None else torch.zeros(0),
            )
        if self.run is not None:
            return self.run(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"SkipCalls(skips calls {self.skip} of {self.ncalls} of {type(self.module).__name__})"
        )


def install_skip(module: nn.Module, skip: Sequence[int], ncalls: int, structure: dict) -> None:
    """Make ``module`` skip its calls ``skip`` of ``ncalls`` per forward.  A second plan on a module that
    already skips calls adds to them (both count every call of the module, so the indices agree)."""
    own = vars(module).get("forward")
    if isinstance(own, SkipCalls):
        skip = sorted(set(own.skip) | set(skip))
    module.forward = SkipCalls(module, skip, ncalls, structure)


def skipping(module: nn.Module) -> SkipCalls | None:
    """The ``SkipCalls`` installed on ``module``, if any."""
    own = vars(module).get("forward")
    return own if isinstance(own, SkipCalls) else None


def reset_calls(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of the root model: every module that skips calls starts counting again."""
    for m in module.modules():
        s = vars(m).get("forward")
        if isinstance(s, SkipCalls):
            s.count = 0


def install_call_reset(model: nn.Module) -> None:
    """Register ``reset_calls`` on ``model`` once, if any module inside skips calls."""
    if (
        any(skipping(m) is not None for m in model.modules())
        and reset_calls not in model._forward_pre_hooks.values()
    ):
        model.register_forward_pre_hook(reset_calls, prepend=True)


def positions(model: nn.Module, original: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute name) under ``model`` that holds ``original`` (a list may hold it twice)."""
    return [
        (m, name)
        for m in model.modules()
        for name, child in m._modules.items()
        if child is original
    ]
