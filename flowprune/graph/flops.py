"""FLOPs of one call of the ops that dominate compute.

Convention: 2 × multiply-accumulates of linear layers, convolutions, matrix products, attention and
recurrent cells.  Elementwise ops (norms, activations, adds) count 0, as in most papers' tables.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm"}
_ADDMM = {"addmm", "baddbmm", "addbmm"}
_CONV = {"conv1d", "conv2d", "conv3d"}


def _arg(args: tuple, kwargs: dict, i: int, *names: str) -> Any:
    # operands may come positionally or by keyword: ``alibi.baddbmm(batch1=q, batch2=k)`` (BLOOM)
    if len(args) > i:
        return args[i]
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return None


def op_flops(name: str, args: tuple, kwargs: dict, out: Any) -> int:
    """FLOPs of one torch function call, from its argument and result shapes (0 if not counted).
    Never raises: an op called in a form not understood here counts 0 rather than breaking the forward."""
    try:
        return _op_flops(name, args, kwargs, out)
    except (IndexError, AttributeError, TypeError, KeyError):
        return 0


def _op_flops(name: str, args: tuple, kwargs: dict, out: Any) -> int:
    if not isinstance(out, torch.Tensor):
        return 0
    if name == "linear":
        return 2 * out.numel() * _arg(args, kwargs, 1, "weight").shape[-1]
    if name in _MATMUL:
        a = _arg(args, kwargs, 0, "input") if name != "__rmatmul__" else args[1]
        return 2 * out.numel() * a.shape[-1]
    if name in _ADDMM:
        return 2 * out.numel() * _arg(args, kwargs, 1, "mat1", "batch1").shape[-1]
    if name in _CONV:
        weight = _arg(args, kwargs, 1, "weight")
        return 2 * out.numel() * math.prod(weight.shape[1:])
    if name == "scaled_dot_product_attention":
        q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        scores = math.prod(q.shape[:-1]) * k.shape[-2]  # B·H·Tq·Tk
        return 2 * scores * (q.shape[-1] + v.shape[-1])
    return 0


def rnn_flops(module: nn.Module, inputs: tuple) -> int:
    """FLOPs of an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call: every weight matrix is applied once per step."""
    x = inputs[0]
    if not isinstance(x, torch.Tensor):  # PackedSequence: one step per packed element
        x = x.data
        steps = x.shape[0]
    else:
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    macs = sum(p.numel() for name, p in module.named_parameters() if name.startswith("weight"))
    return 2 * steps * macs
