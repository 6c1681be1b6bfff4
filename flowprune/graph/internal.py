"""Shared low-level pieces of the forward observers: which ops merge, and the "internal" switch that
hides flowprune's own arithmetic (gates, bookkeeping) from them."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

MERGE_KIND = {
    "add": "add",
    "add_": "add",
    "__add__": "add",
    "__radd__": "add",
    "__iadd__": "add",
    "mul": "mul",
    "mul_": "mul",
    "__mul__": "mul",
    "__rmul__": "mul",
    "__imul__": "mul",
    "cat": "cat",
    "concat": "cat",
    "concatenate": "cat",
}
INPLACE_DUNDER = {
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__setitem__",
    "__ior__",
    "__iand__",
}

_state = threading.local()


@contextmanager
def internal() -> Iterator[None]:
    """Ops run inside this block (gate arithmetic, recorder bookkeeping) are invisible to recorders."""
    prev = getattr(_state, "internal", False)
    _state.internal = True
    try:
        yield
    finally:
        _state.internal = prev


def is_internal() -> bool:
    return getattr(_state, "internal", False)


def flat_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(v for v in x if isinstance(v, torch.Tensor))
    return out
