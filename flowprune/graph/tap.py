"""A light observer of later forwards: find the traced merges and module calls again, cheaply.

The Recorder names a merge by (enclosing call key, index among the add/mul/cat calls run directly in
that call).  ``Tap`` keeps the same call stack and the same counter without tracking tensors, and hands
the operands and result of the wanted merges, and the primary input and output of the wanted calls, to
callbacks.  The gates' self-check and the one-pass flow statistics use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .._tree import first_tensor, tensor_leaves
from .callstack import CallStack, call_key
from .internal import flat_tensors, internal, is_internal

MergeFn = Callable[[tuple, list, torch.Tensor], None]  # (key, operands, result)
CallFn = Callable[
    [str, torch.Tensor, torch.Tensor], None
]  # (call key, primary input (a copy), primary output)


@dataclass
class _Frame:
    path: str
    k: int
    leaf: bool
    x: torch.Tensor | None  # a copy of the primary input, for wanted calls
    raw_merges: int = 0


class Tap(CallStack):
    """``with Tap(model, merges={key: ...}, on_merge=f, calls={key, ...}, on_call=g): model(x)``."""

    def __init__(
        self,
        model: nn.Module,
        merges: set | None = None,
        on_merge: MergeFn | None = None,
        calls: set | None = None,
        on_call: CallFn | None = None,
    ):
        super().__init__(model)
        self.merges, self.on_merge = merges or set(), on_merge
        self.calls, self.on_call = calls or set(), on_call

    def __enter__(self) -> "Tap":
        self.stack.clear()
        self.ncalls.clear()
        self.install()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        self.remove()
        return super().__exit__(*exc)

    def open_frame(
        self, module: nn.Module, path: str, k: int, leaf: bool, args: tuple, kwargs: dict
    ) -> _Frame:
        x = first_tensor(args, kwargs) if call_key(path, k) in self.calls else None
        if x is not None:  # later in-place ops may change it
            with internal():
                x = x.detach().clone()
        return _Frame(path, k, leaf, x)

    def close_frame(
        self, frame: _Frame, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        key = call_key(frame.path, frame.k)
        if key in self.calls and self.on_call is not None:
            outs = tensor_leaves(output)
            with internal():
                self.on_call(
                    key, frame.x, outs[0].detach() if outs else None
                )  # a caller that keeps it copies it

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_internal():
            return func(*args, **kwargs)
        merge = self.next_merge(getattr(func, "__name__", ""))
        if merge is None or merge[1] not in self.merges or self.on_merge is None:
            return func(*args, **kwargs)
        name = func.__name__
        inplace = name.endswith("_") or name.startswith("__i")
        with internal():  # an in-place add overwrites operand 0: keep what went in
            ops = [
                t.detach().clone() if inplace else t.detach() for t in flat_tensors(args, kwargs)
            ]
        out = func(*args, **kwargs)
        with internal():
            self.on_merge(merge[1], ops, out.detach())
        return out
