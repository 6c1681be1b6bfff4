"""Parameter-free modules that stand where removed modules were."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._tree import decode, first_tensor


class Removed(nn.Module):
    """Returns zeros (a removed branch or dead module) or its input (a removed layer), in the output
    structure the original module had, e.g. ``(zeros[B, T, D], None)`` for an HF attention module.

    >>> stub = Removed({"t": "tensor", "shape": ["in:0", "in:1", 32], "dtype": "float32"}, "LlamaMLP")
    >>> stub(torch.ones(2, 5, 32)).shape
    torch.Size([2, 5, 32])
    """

    def __init__(self, structure: dict, original: str = ""):
        super().__init__()
        self.structure = structure
        self.original = original
        # [0]: follows .to(device, dtype) so that a stub without tensor inputs still knows both
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return decode(self.structure, first_tensor(args, kwargs), self.anchor)

    def extra_repr(self) -> str:
        return f"was {self.original}" if self.original else ""
