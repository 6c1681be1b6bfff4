"""Module-level rules of the channel tracer: modules whose inner ops are not traced one by one.

* ``nn.LSTM``/``nn.GRU``/``nn.RNN``: hidden unit j of every layer and direction is one unit (one
  ``hidden_size`` for all): its gate rows, its recurrent and next-layer input columns;
* a normalisation module under ``residual=True``: per channel (inexact), whatever its code does inside.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._tree import tensor_leaves
from .trace import ChannelTrace, atoms_in, compact


def recurrent(t: ChannelTrace, path: str, m: nn.Module, args: tuple, output: Any) -> None:
    """nn.LSTM / nn.GRU / nn.RNN: hidden unit j of every layer and direction is one unit (one
    ``hidden_size`` for all), its gate rows, its recurrent and next-layer input columns."""
    x = args[0] if args else None
    if (
        not isinstance(x, Tensor)
        or getattr(m, "proj_size", 0)
        or (len(args) > 1 and t.is_tracked(args[1]))
    ):
        why = f"{type(m).__name__} ({path}) with packed input, projections or a tracked state"
        a = t.poison(why, *tensor_leaves(args))
        if a is not None:
            for o in tensor_leaves(output):
                t.set(o, a.expand(o.shape))
        return
    H, L = m.hidden_size, m.num_layers
    dirs = 2 if m.bidirectional else 1
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    a = t.fresh(H)
    prefix = f"{path}." if path else ""
    outs = tensor_leaves(output)
    steps = outs[0].numel() // (dirs * H) if outs else 1
    for layer in range(L):
        for s in ("", "_reverse")[:dirs]:
            w_ih = f"{prefix}weight_ih_l{layer}{s}"
            w_hh = f"{prefix}weight_hh_l{layer}{s}"
            rows, atoms = torch.arange(gates * H), a.repeat(gates)
            for n in (w_ih, w_hh, f"{prefix}bias_ih_l{layer}{s}", f"{prefix}bias_hh_l{layer}{s}"):
                if n in t.tensors:
                    t.produce(n, 0, atoms, rows)
            t.consume(w_hh, 1, a)
            if layer == 0:
                t.consume(w_ih, 1, t.channel_atoms(x, x.dim() - 1))
            else:
                t.consume(w_ih, 1, a.repeat(dirs))
            t.weight_ops += [(w_ih, steps), (w_hh, steps)]
    t.rnn_layouts[path] = (H, gates)
    for o in outs:
        if o.shape[-1] == dirs * H:
            t.set(o, a.repeat(dirs).expand(o.shape))
        elif o.shape[-1] == H:
            t.set(o, a.expand(o.shape))


def norm_module(t: ChannelTrace, path: str, m: nn.Module, args: tuple, output: Any) -> None:
    """A normalisation module under ``residual=True``: per channel (inexact).  The channel dim is the
    one its weight's size matches (the last for LayerNorm/RMSNorm, dim 1 for channels-first norms)."""
    x = args[0] if args else None
    lab = t.lab(x)
    if lab is None or not isinstance(output, Tensor) or tuple(output.shape) != tuple(lab.shape):
        return
    t.normed.update(atoms_in(lab).tolist())
    t.set(output, lab)
    for p in m.parameters(recurse=False):
        plab = t.lab(p)
        if plab is None or plab.dim() != 1:
            continue
        lab = compact(lab)  # the channel dim is one the labels vary along (not a spatial one)
        dims = [
            d
            for d in range(lab.dim() - 1, -1, -1)
            if lab.shape[d] == plab.numel() and lab.stride(d) != 0
        ]
        if dims:
            shape = [1] * lab.dim()
            shape[dims[0]] = -1
            t.align(plab.view(shape), lab)


MODULE_RULES: dict[type, Callable] = {nn.RNNBase: recurrent}
