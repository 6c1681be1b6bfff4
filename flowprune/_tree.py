"""Nested module inputs/outputs: find their tensors, replace one, and describe their structure as JSON.

HF modules return tuples (``(attn_output, attn_weights)``), ``ModelOutput`` dicts or plain tensors; a
stub that replaces a module must return the same structure. ``encode`` records it from one traced
call; ``decode`` rebuilds it at run time, taking batch/sequence sizes from the stub's first tensor
input so the stub works for other batch sizes and sequence lengths than the traced ones.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree


class NotStubbable(ValueError):
    """An output structure that a parameter-free stub cannot reproduce (e.g. a KV-cache object)."""


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """All tensors in a nested tuple/list/dict/ModelOutput, in pytree order."""
    return [x for x in pytree.tree_leaves(obj) if isinstance(x, torch.Tensor)]


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The primary input of a module call: first tensor positional argument, else first tensor kwarg."""
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, torch.Tensor):
            return x
    return None


def replace_tensor_leaf(obj: Any, index: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Return ``obj`` with its ``index``-th tensor leaf replaced by ``fn(leaf)``."""
    if isinstance(obj, torch.Tensor):
        if index != 0:
            raise IndexError(index)
        return fn(obj)
    leaves, spec = pytree.tree_flatten(obj)
    k = -1
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor):
            k += 1
            if k == index:
                leaves[i] = fn(x)
                return pytree.tree_unflatten(leaves, spec)
    raise IndexError(index)


def _shape_rule(out: torch.Tensor, primary: torch.Tensor | None) -> list:
    # A dim equal to the primary input's dim at the same position is taken from the input at run time
    # ("in:d"); the others (hidden size, heads) are fixed.  [B, T, D] -> ["in:0", "in:1", D].
    rule: list = []
    for d, size in enumerate(out.shape):
        if primary is not None and d < primary.dim() and primary.shape[d] == size:
            rule.append(f"in:{d}")
        else:
            rule.append(int(size))
    return rule


def encode(obj: Any, primary: torch.Tensor | None, identity_index: int | None = None) -> dict:
    """JSON description of a module output.  The tensor leaf ``identity_index`` (if given) is marked to
    be returned as the stub's primary input (identity removal); every other tensor becomes zeros."""
    counter = [0]

    def enc(x: Any) -> dict:
        if isinstance(x, torch.Tensor):
            k = counter[0]
            counter[0] += 1
            if k == identity_index:
                return {"t": "input"}
            return {
                "t": "tensor",
                "shape": _shape_rule(x, primary),
                "dtype": str(x.dtype).replace("torch.", ""),
            }
        if x is None:
            return {"t": "none"}
        if isinstance(x, (bool, int, float, str)):
            return {"t": "const", "v": x}
        if type(x) in (tuple, list):
            return {"t": type(x).__name__, "items": [enc(v) for v in x]}
        if type(x) is dict:
            return {"t": "dict", "items": {str(k): enc(v) for k, v in x.items()}}
        raise NotStubbable(f"cannot reproduce an output of type {type(x).__name__}")

    return enc(obj)


def decode(spec: dict, primary: torch.Tensor | None, anchor: torch.Tensor) -> Any:
    """Rebuild an output from ``encode``'s description.  ``anchor`` gives device and dtype when the
    call has no tensor input."""

    def dec(s: dict) -> Any:
        t = s["t"]
        if t == "input":
            if primary is None:
                raise RuntimeError("identity stub called without a tensor input")
            return primary
        if t == "tensor":
            if (
                primary is not None and primary.is_nested
            ):  # nn.TransformerEncoder's padding-mask path
                if len(s["shape"]) != primary.dim() or any(
                    not isinstance(d, str) for d in s["shape"][:-1]
                ):
                    raise RuntimeError(
                        "a removed module got a nested tensor and had another output shape"
                    )
                return torch.zeros_like(primary)
            shape = [primary.shape[int(d[3:])] if isinstance(d, str) else d for d in s["shape"]]
            dtype = getattr(torch, s["dtype"])
            ref = primary if primary is not None else anchor
            if dtype.is_floating_point and ref.dtype.is_floating_point:
                dtype = ref.dtype  # follow model.half() / .to(bfloat16) done after the rewrite
            return torch.zeros(shape, dtype=dtype, device=ref.device)
        if t == "none":
            return None
        if t == "const":
            return s["v"]
        if t in ("tuple", "list"):
            items = [dec(v) for v in s["items"]]
            return tuple(items) if t == "tuple" else items
        if t == "dict":
            return {k: dec(v) for k, v in s["items"].items()}
        raise ValueError(f"unknown structure node {t!r}")

    return dec(spec)
