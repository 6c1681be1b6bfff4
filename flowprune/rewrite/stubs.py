"""Parameter-free modules that stand where removed modules were (or, with a compensation fill, a
constant or a small linear map fitted on calibration activations)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._tree import decode, first_tensor, replace_tensor_leaf
from ..adapters import fill_cache_slot
from .shadow import resolve


class Removed(nn.Module):
    """Returns zeros (a removed branch or dead module) or its input (a removed layer), in the output
    structure the original module had, e.g. ``(zeros[B, T, D], None)`` for an HF attention module.

    ``fill="mean"`` adds the branch's mean output (buffer ``fill``, e.g. [1, C, 1, 1]); ``fill="linear"``
    returns ``linear(x)`` for the gated output, a least-squares map from the module's input over its
    channel dim ``linear[2]``: a Linear over D for [B, T, D] (-1), a 1×1 convolution for [B, C, H, W] (1;
    applied as the same Linear on ``x.movedim(1, -1)``, so the state keys stay ``linear.weight/bias``).
    A stub for a module that had a ``layer_idx`` (HF attention) still appends an empty entry to the KV
    cache, so the cache's length stays right during ``generate``.

    >>> stub = Removed({"t": "tensor", "shape": ["in:0", "in:1", 32], "dtype": "float32"}, "LlamaMLP")
    >>> stub(torch.ones(2, 5, 32)).shape
    torch.Size([2, 5, 32])
    """

    flowprune_stub = True  # read by candidate discovery: a stub is never a candidate again

    def __init__(
        self,
        structure: dict,
        original: str = "",
        fill: str = "zeros",
        out_index: int = 0,
        layer_idx: int | None = None,
        fill_shape: list[int] | None = None,
        linear: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.structure = structure
        self.original = original
        self.mode = fill
        self.out_index = out_index
        if layer_idx is not None:
            self.layer_idx = layer_idx
        # [0]: follows .to(device, dtype) so that a stub without tensor inputs still knows both
        self.register_buffer("anchor", torch.zeros(0), persistent=False)
        if fill == "mean":
            self.register_buffer("fill", torch.zeros(fill_shape or [1]))
        if fill == "linear":  # linear: (in_channels, out_channels[, channel_dim, default -1])
            self.linear = nn.Linear(linear[0], linear[1])
            self.fill_dim = int(linear[2]) if len(linear) > 2 else -1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = first_tensor(args, kwargs)
        out = decode(self.structure, x, self.anchor)
        if self.mode == "mean":
            out = replace_tensor_leaf(out, self.out_index, lambda z: z + self.fill.to(z.dtype))
        elif self.mode == "linear":
            out = replace_tensor_leaf(
                out, self.out_index, lambda z: self._linear_fill(x).to(z.dtype)
            )
        fill_cache_slot(
            kwargs, getattr(self, "layer_idx", None), x
        )  # the KV cache keeps its length
        return out

    def _linear_fill(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., C_in] -> [..., C_out] (dim -1), or [B, C_in, *S] -> [B, C_out, *S] (dim 1: a 1×1 conv)
        x = x.to(self.linear.weight.dtype)
        d = getattr(self, "fill_dim", -1)
        return (
            self.linear(x)
            if d in (-1, x.dim() - 1)
            else self.linear(x.movedim(d, -1)).movedim(-1, d)
        )

    def __getattr__(self, name: str) -> Any:
        # Parents read attributes of the module this stub replaced (fast-path checks, dtype casts):
        # ``shadow`` (see shadow.py) answers them without keeping any weight.
        try:
            return super().__getattr__(name)
        except AttributeError:
            spec = self.__dict__.get("shadow")
            if spec is None or name.startswith("__"):
                raise
            try:
                return resolve(
                    spec,
                    name,
                    self.__dict__["_buffers"].get("anchor"),
                    spec.get("path") or self.original,
                )
            except AttributeError:
                raise AttributeError(
                    f"'{spec.get('path') or 'module'}' ({self.original}) was removed by "
                    f"flowprune.apply and had no attribute '{name}'"
                ) from None

    def extra_repr(self) -> str:
        return (f"was {self.original}" if self.original else "") + (
            f", fill={self.mode}" if self.mode != "zeros" else ""
        )
