"""A light observer of later forwards: find the traced merges and module calls again, cheaply.

The Recorder names a merge by (enclosing call key, index among the add/mul/cat calls run directly in
that call).  ``Tap`` keeps the same call stack and the same counter without tracking tensors, and hands
the operands and result of the wanted merges, and the primary input and output of the wanted calls, to
callbacks.  The gates' self-check and the one-pass flow statistics use it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._tree import first_tensor, tensor_leaves
from .recorder import MERGE_KIND, _flat_tensors, _is_internal, internal

MergeFn = Callable[[tuple, list, torch.Tensor], None]  # (key, operands, result)
CallFn = Callable[[str, torch.Tensor, torch.Tensor], None]  # (call key, primary input (a copy), primary output)


class Tap(TorchFunctionMode):
    """``with Tap(model, merges={key: ...}, on_merge=f, calls={key, ...}, on_call=g): model(x)``."""

    def __init__(self, model: nn.Module, merges: set | None = None, on_merge: MergeFn | None = None,
                 calls: set | None = None, on_call: CallFn | None = None):
        super().__init__()
        self.model = model
        self.paths: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            self.paths.setdefault(m, name)
        self.merges, self.on_merge = merges or set(), on_merge
        self.calls, self.on_call = calls or set(), on_call
        self.stack: list[list] = []  # [key, leaf, raw merge count, primary input]
        self.ncalls: dict[nn.Module, int] = {}
        self._handles: list = []

    def __enter__(self) -> "Tap":
        self.stack.clear()
        self.ncalls.clear()
        for m in self.paths:
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if _is_internal() or (self.stack and self.stack[-1][1]):
            return
        k = self.ncalls.get(module, 0)
        self.ncalls[module] = k + 1
        key = f"{self.paths.get(module, '?')}#{k}"
        x = first_tensor(args, kwargs) if key in self.calls else None
        if x is not None:  # later in-place ops may change it
            with internal():
                x = x.detach().clone()
        self.stack.append([key, len(module._modules) == 0, 0, x])

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if _is_internal() or not self.stack or not self.stack[-1][0].startswith(self.paths.get(module, "?") + "#"):
            return
        key, _, _, x = self.stack.pop()
        if key in self.calls and self.on_call is not None:
            outs = tensor_leaves(output)
            with internal():
                self.on_call(key, x, outs[0].detach() if outs else None)  # a caller that keeps it copies it

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_internal() or not self.stack or self.stack[-1][1]:
            return func(*args, **kwargs)
        if MERGE_KIND.get(getattr(func, "__name__", "")) is None:
            return func(*args, **kwargs)
        top = self.stack[-1]
        key = (top[0], top[2])
        top[2] += 1
        if key not in self.merges or self.on_merge is None:
            return func(*args, **kwargs)
        name = func.__name__
        inplace = name.endswith("_") or name.startswith("__i")
        with internal():  # an in-place add overwrites operand 0: keep what went in
            ops = [t.detach().clone() if inplace else t.detach() for t in _flat_tensors(args, kwargs)]
        out = func(*args, **kwargs)
        with internal():
            self.on_merge(key, ops, out.detach())
        return out
