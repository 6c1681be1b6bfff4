"""Unit gates: one α per unit of every channel group; α = 0 is the unit's removal.

A unit is masked where slicing removes it: at its consumers, whose input columns for the unit are
multiplied by α (a consumer never sees the unit again, exactly as after slicing).  The masked weights
are swapped in for the duration of each forward of the root model (``W * m``, differentiable in α, so
gate-space gradients, Hessians and Fisher work on unit gates as on the scalar ones) and restored after;
the model's own parameters are never written.

>>> with UnitGates(model, groups) as gates:
...     gates.set({"fc1:channels": [0, 3]}, 0.0)
...     out = model(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .groups import ChannelGroup
from .slicing import holders


def _holders(model: nn.Module) -> dict[str, list[tuple[dict, str]]]:
    """state_dict name -> every (module's parameter or buffer dict, key) holding that tensor (tied
    weights have several; a weight may be a buffer)."""
    by_id = holders(model)
    out: dict[str, list[tuple[dict, str]]] = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        out.setdefault(
            n, [(m._parameters if p else m._buffers, attr) for m, attr, p in by_id[id(t)]]
        )
    return out


@dataclass(frozen=True)
class Unit:
    """One unit as a gate entry: ``id`` is ``"<group id>#<unit>"``."""

    id: str
    group: str
    unit: int
    kind: str


class UnitGates:
    """Context manager with ``alpha`` (shape [U], U = total units; group ``g`` owns
    ``alpha[offsets[g.id] : offsets[g.id] + g.units]``).  It has the interface of the scalar
    ``Gates`` that the score engine uses (``candidates``, ``index``, ``alpha``, ``device``), so
    ``Engine(graph, batches, loss, gates=UnitGates(model, groups))`` gives per-unit losses, gate
    gradients, Hessians and Fisher matrices through the same code (replay is for branch candidates
    only: pass ``replay=False`` where an analysis offers it).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup]):
        self.model = model
        self.groups = list(groups)
        self.offsets: dict[str, int] = {}
        total = 0
        for g in self.groups:
            self.offsets[g.id] = total
            total += g.units
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.alpha = torch.ones(total, device=self.device)
        # (param, dim) -> column index -> unit (total = not gated)
        self._maps: dict[tuple[str, int], Tensor] = {}
        holders = _holders(model)
        state = dict(model.named_parameters())
        state.update(dict(model.named_buffers()))
        self._rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
        self._holders = {}
        for g in self.groups:
            for m in g.members:
                if m.role != "consumer":
                    continue
                t = state[m.param]
                key = (m.param, m.dim)
                if key not in self._maps:
                    self._maps[key] = torch.full((t.shape[m.dim],), total, dtype=torch.long)
                for u, idx in enumerate(m.index):
                    self._maps[key][list(idx)] = self.offsets[g.id] + u
                self._holders[m.param] = holders[m.param]
        self._maps = {k: v.to(self.device) for k, v in self._maps.items()}
        self._saved: dict[str, Tensor] = {}
        self._handles: list = []
        self.candidates = [
            Unit(f"{g.id}#{u}", g.id, u, g.kind) for g in self.groups for u in range(g.units)
        ]
        self.index = {c.id: i for i, c in enumerate(self.candidates)}

    def __enter__(self) -> "UnitGates":
        self._handles = [
            self.model.register_forward_pre_hook(self._swap),
            self.model.register_forward_hook(self._restore_hook),
        ]
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- the forward ---------------------------------------------------------------------------------
    def _swap(self, module: nn.Module, args: tuple) -> None:
        if self._saved:  # a nested call of the root: already masked
            return
        ones = torch.ones(1, device=self.alpha.device, dtype=self.alpha.dtype)
        full = torch.cat([self.alpha, ones])
        masked: dict[str, Tensor] = {}
        for (name, dim), cols in self._maps.items():
            hold = self._holders[name]
            w = masked.get(name, hold[0][0][hold[0][1]])
            shape = [1] * w.dim()
            shape[dim] = -1
            masked[name] = w * full[cols].view(shape).to(w.dtype)
        for name, w in masked.items():
            for store, attr in self._holders[name]:
                self._saved.setdefault(name, store[attr])
                store[attr] = w
        self._refresh()

    def _restore_hook(self, module: nn.Module, args: tuple, output) -> None:
        self._restore()

    def _restore(self) -> None:
        for name, p in self._saved.items():
            for store, attr in self._holders[name]:
                store[attr] = p
        if self._saved:
            self._saved = {}
            self._refresh()

    def _refresh(self) -> None:
        # recurrent modules read their weights through a cached list
        for m in self._rnns:
            m._init_flat_weights()

    # -- setting α -------------------------------------------------------------------------------------
    def set(self, units: Mapping[str, Iterable[int]], value: float = 0.0) -> None:
        """Set α of the given units (``{group id: [unit, ...]}``) to ``value``."""
        a = self.alpha.detach().clone()
        for gid, us in units.items():
            us = list(us)
            if us:
                a[torch.tensor(us, device=a.device) + self.offsets[gid]] = value
        self.alpha = a

    def reset(self) -> None:
        self.alpha = torch.ones_like(self.alpha)

    def skipped(self, cid: int) -> None:
        """Replay bookkeeping of the scalar gates; units are masked by weights, nothing to count."""
