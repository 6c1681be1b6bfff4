"""The naming both observers of a forward share: module calls and merge ops.

A call is named ``"<module path>#<k>"`` (the k-th call of that module in the forward); calls made inside
a leaf module and ops run under ``internal()`` (gate arithmetic, bookkeeping) are not counted.  A merge op
(add/mul/cat) is named by its call and its index among the merge-named ops run directly in that call.
The Recorder (trace) and the Tap (later forwards) both subclass ``CallStack``, so the names they give
agree by construction.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from .internal import MERGE_KIND, internal, is_internal


def call_key(path: str, k: int) -> str:
    """The name of the k-th call of module ``path`` in a forward."""
    return f"{path}#{k}"


class CallStack(TorchFunctionMode):
    """Module hooks keeping a stack of frames (``open_frame``/``close_frame`` are the subclass's)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.paths: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            self.paths.setdefault(m, name)
        self.stack: list[Any] = []  # frames with .path, .k, .leaf, .raw_merges
        self.ncalls: dict[nn.Module, int] = {}
        self._handles: list = []

    def install(self) -> None:
        for m in self.paths:
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if is_internal() or (self.stack and self.stack[-1].leaf):
            return
        k = self.ncalls.get(module, 0)
        self.ncalls[module] = k + 1
        with internal():
            frame = self.open_frame(
                module, self.paths.get(module, "?"), k, len(module._modules) == 0, args, kwargs
            )
        self.stack.append(frame)

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if is_internal() or not self.stack or self.stack[-1].path != self.paths.get(module, "?"):
            return
        frame = self.stack.pop()
        with internal():
            self.close_frame(frame, module, args, kwargs, output)

    def next_merge(self, name: str) -> tuple[str, tuple[str, int]] | None:
        """(kind, merge key) if ``name`` is a merge op run directly in a non-leaf call, else None."""
        if not self.stack or self.stack[-1].leaf:
            return None
        kind = MERGE_KIND.get(name)
        if kind is None:
            return None
        top = self.stack[-1]
        key = (call_key(top.path, top.k), top.raw_merges)
        top.raw_merges += 1
        return kind, key

    def open_frame(
        self, module: nn.Module, path: str, k: int, leaf: bool, args: tuple, kwargs: dict
    ) -> Any:
        raise NotImplementedError

    def close_frame(
        self, frame: Any, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        raise NotImplementedError
