"""The channel tracer: one forward under a ``TorchFunctionMode`` that gives every traced tensor a label
tensor (int64, same shape) naming, per element, the channel it belongs to.

Labels: ``>= 0`` an *atom* (one output channel of a linear/conv/embedding/recurrent op: a fresh id per
channel), ``-1`` untracked (inputs, constants), ``<= -2`` an element of a parameter or buffer
(``-(2 + offset + flat index)``), carried by parameters moved through shape ops (a chunk of a fused
weight, an expanded class token).  The rule table (``rules.py``) moves labels through each op and
records *edges*: two atoms that must be removed together (element-wise ops join the atoms that meet,
an op whose output element depends on a set of elements joins that set).  Parameter-weighted
contractions are the boundary: they *consume* their input channel (a member: the weight's input
column) and *produce* fresh atoms (members: the weight's row and the bias).  Connected components of the
atoms are the units; ``groups.py`` turns them into channel groups.

>>> t = ChannelTrace(model); t.run(example_inputs); t.n_atoms
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from .._runtime import call_model, eval_mode
from .._tree import tensor_leaves

UNTRACKED = -1


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property (x.T, x.mT, x.data): name it by the property
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


def compact(lab: Tensor) -> Tensor:
    """``lab`` with every dim along which it is constant stored once (stride 0): labels rarely vary
    along batch or sequence dims, and the rules then touch one position instead of all."""
    out = lab
    for d in range(lab.dim()):
        if out.shape[d] > 1 and out.stride(d) != 0:
            first = out.narrow(d, 0, 1)
            if bool((out == first).all()):
                out = first.expand(out.shape)
    return out


def atoms_in(lab: Tensor) -> Tensor:
    """The distinct atoms (>= 0) of a label tensor, reading each constant dim once."""
    lab = compact(lab)
    for d in range(lab.dim()):
        if lab.shape[d] > 1 and lab.stride(d) == 0:
            lab = lab.narrow(d, 0, 1)
    return lab[lab >= 0].unique()


def shrink(*ts: Tensor) -> list[Tensor]:
    """Broadcast ``ts`` together and keep one position along the dims where all of them are constant
    (stride 0): the pairs they make are the same, at a fraction of the cost."""
    ts = torch.broadcast_tensors(*ts)
    for d in range(ts[0].dim()):
        if ts[0].shape[d] > 1 and all(t.stride(d) == 0 for t in ts):
            ts = [t.narrow(d, 0, 1) for t in ts]
    return list(ts)


def _unique_pairs(a: Tensor, b: Tensor) -> Tensor:
    """Distinct (a[i], b[i]) pairs of non-negative ints as a [2, k] tensor (a 1-D unique of a*M + b:
    ``unique(dim=...)`` on pairs is orders of magnitude slower)."""
    m = int(b.max()) + 1
    key = torch.unique(a.reshape(-1) * m + b.reshape(-1))
    return torch.stack([key // m, key % m])


class ChannelTrace(TorchFunctionMode):
    """Runs the model once and collects atoms, edges, members and unusable atoms (with the op's name).

    ``residual=True`` lets normalisations over the channel dim (LayerNorm, RMSNorm, GroupNorm) act per
    channel instead of joining every channel they normalise; removing such a channel changes the norm's
    statistics, so groups found that way are marked ``exact=False``.
    """

    def __init__(self, model: nn.Module, residual: bool = False):
        super().__init__()
        self.model = model
        self.residual = residual
        self.names: dict[int, str] = {}  # id(param or buffer) -> its state_dict name
        self.tensors: dict[str, Tensor] = {}
        self.offsets: dict[str, int] = {}
        off = 0
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if id(t) in self.names:
                continue
            self.names[id(t)] = n
            self.tensors[n] = t
            self.offsets[n] = off
            off += t.numel()
        self._ends = np.array([self.offsets[n] + t.numel() for n, t in self.tensors.items()])
        self._order = list(self.tensors)
        self.labels = WeakTensorKeyDictionary()
        self._plabels: dict[str, Tensor] = {}
        self.n_atoms = 0
        self.edges: list[Tensor] = []  # [2, k] atom pairs
        # (param name, dim, index [k], atom [k], role "producer" | "consumer")
        self.struct: list[tuple[str, int, Tensor, Tensor, str]] = []
        # (param label [k] (<= -2), atom [k], "elem"): parameter elements met element-wise
        self.aligned: list[tuple[Tensor, Tensor, str]] = []
        # (labels of a weight moved out of a parameter, its dim, atom per index, role): resolved to
        # the parameter's dim at the end (a chunk of a fused qkv weight, a transposed weight)
        self.derived: list[tuple[Tensor, int, Tensor, str]] = []
        self.links: list[Tensor] = []  # [2, k] negated parameter labels combined element-wise
        self.bad: dict[int, str] = {}  # atom -> why it cannot be removed
        # (op, atom pairs) that must be one unit, else unusable (a constant spanning their dim)
        self.together: list[tuple[str, Tensor]] = []
        self.heads: set[int] = set()  # atoms joined by an activation x activation contraction
        self.normed: set[int] = set()  # atoms a norm treated per channel (residual=True)
        self.weight_ops: list[
            tuple[str, int]
        ] = []  # (param, output positions): MACs = numel * positions
        self.pair_ops: list[
            tuple[Tensor, int]
        ] = []  # (output atoms, K): MACs of act x act products
        self.rnn_layouts: dict[str, tuple] = {}  # recurrent module path -> (hidden size, gates)
        self._inside = 0  # >0 while a module with a module-level rule runs
        self._hooks: list = []

    # -- labels ------------------------------------------------------------------------------------
    def fresh(self, n: int) -> Tensor:
        a = torch.arange(self.n_atoms, self.n_atoms + n)
        self.n_atoms += n
        return a

    def param_name(self, t: Any) -> str | None:
        return self.names.get(id(t)) if isinstance(t, Tensor) else None

    def lab(self, t: Any) -> Tensor | None:
        """The label tensor of ``t`` (None: untracked)."""
        if not isinstance(t, Tensor):
            return None
        got = self.labels.get(t)
        if got is not None:
            return got
        n = self.names.get(id(t))
        if n is None:
            return None
        if n not in self._plabels:
            p = self.tensors[n]
            self._plabels[n] = -(2 + self.offsets[n] + torch.arange(p.numel())).view(p.shape)
        return self._plabels[n]

    def lab_or_untracked(self, t: Tensor) -> Tensor:
        got = self.lab(t)
        return got if got is not None else torch.full(t.shape, UNTRACKED, dtype=torch.long)

    def set(self, t: Any, labels: Tensor | None) -> None:
        if isinstance(t, Tensor) and labels is not None:
            if tuple(labels.shape) != tuple(t.shape):
                labels = torch.broadcast_to(labels, t.shape)
            self.labels[t] = compact(labels)

    def is_tracked(self, t: Any) -> bool:
        """Whether ``t`` carries channel atoms (a parameter never does: no labels are made for it)."""
        if not isinstance(t, Tensor) or id(t) in self.names:
            return False
        lab = self.labels.get(t)
        return lab is not None and bool((lab >= 0).any())

    # -- relations ---------------------------------------------------------------------------------
    def unify(self, a: Tensor, b: Tensor) -> None:
        """Join atoms a[i] and b[i] (same shape; untracked/parameter labels ignored)."""
        a, b = shrink(a, b)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            self.edges.append(_unique_pairs(a[keep], b[keep]))

    def align(self, plabels: Tensor, atoms: Tensor, role: str = "elem") -> None:
        """Record parameter elements (labels <= -2) meeting atoms element-wise."""
        p, a = shrink(plabels, atoms)
        keep = (p <= -2) & (a >= 0)
        if keep.any():
            pairs = _unique_pairs(-p[keep], a[keep])
            self.aligned.append((-pairs[0], pairs[1], role))

    def spanning(self, op: str, x: Tensor, o: Tensor, shape: tuple) -> None:
        """``x`` (made in the forward, not sliced) meets labels ``o`` in op ``op``: along each dim where
        x is not broadcast and the atoms differ, they must form one unit (checked in ``groups``)."""
        lead = len(shape) - x.dim()
        for d in range(x.dim()):
            od = lead + d
            if x.shape[d] <= 1 or o.shape[od] <= 1:
                continue
            first = o.narrow(od, 0, 1).expand(o.shape)
            keep = (o >= 0) & (first >= 0) & (o != first)
            if keep.any():
                self.together.append((op, _unique_pairs(o[keep], first[keep])))

    def link(self, a: Tensor, b: Tensor) -> None:
        """Record parameter elements a[i] and b[i] (labels <= -2) as one: aligned together later."""
        a, b = shrink(a, b)
        keep = (a <= -2) & (b <= -2) & (a != b)
        if keep.any():
            self.links.append(_unique_pairs(-a[keep], -b[keep]))

    def poison(self, why: str, *tensors: Any) -> Tensor | None:
        """Mark every atom in ``tensors`` unusable (``why`` names the op); join them into one atom, which
        is returned (None when none was tracked) to label what the op produced."""
        atoms = [atoms_in(lab) for t in tensors if (lab := self.lab(t)) is not None]
        atoms = [a for a in atoms if a.numel()]
        if not atoms:
            return None
        allat = torch.cat(atoms).unique()
        for a in allat.tolist():
            self.bad.setdefault(a, why)
        self.unify(allat, allat[:1].expand_as(allat))
        return allat[0]

    def channel_atoms(self, x: Tensor, dim: int) -> Tensor:
        """One atom per index of ``dim`` of ``x`` (-1: untracked), joining what each channel carries at
        every position and aligning parameter elements found there; shape [x.shape[dim]]."""
        lab = compact(self.lab_or_untracked(x)).movedim(dim, -1)
        for d in range(lab.dim() - 1):  # positions where nothing changes count once
            if lab.shape[d] > 1 and lab.stride(d) == 0:
                lab = lab.narrow(d, 0, 1)
        flat = lab.reshape(-1, lab.shape[-1])  # [positions, C]
        rep = flat.amax(0)  # [C]
        self.unify(flat, rep.expand_as(flat))
        self.align(flat, rep.expand_as(flat))
        return rep

    def consume(self, pname: str, dim: int, atoms: Tensor) -> None:
        idx = torch.arange(atoms.numel())
        keep = atoms >= 0
        if keep.any():
            self.struct.append((pname, dim, idx[keep], atoms[keep], "consumer"))

    def produce(
        self, pname: str | None, dim: int, atoms: Tensor, idx: Tensor | None = None
    ) -> None:
        if pname is None:
            return
        idx = torch.arange(atoms.numel()) if idx is None else idx
        self.struct.append((pname, dim, idx, atoms, "producer"))

    # -- running -----------------------------------------------------------------------------------
    def run(self, example_inputs: Any) -> Any:
        from ..adapters import is_norm, scoring_kwargs
        from .modules import MODULE_RULES, norm_module

        for path, m in self.model.named_modules():
            rule = next((r for cls, r in MODULE_RULES.items() if isinstance(m, cls)), None)
            if (
                rule is None
                and self.residual
                and is_norm(m, self.model)
                and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
            ):
                rule = norm_module
            if rule is not None:
                self._hooks.append(m.register_forward_pre_hook(self._enter))
                self._hooks.append(m.register_forward_hook(self._exit_rule(rule, path)))
        try:
            with eval_mode(self.model), torch.no_grad(), self:
                if isinstance(example_inputs, dict):  # no KV cache: it would return every k/v
                    example_inputs = {**example_inputs, **scoring_kwargs(self.model)}
                out = call_model(self.model, example_inputs)
        finally:
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
        for t in tensor_leaves(out):
            lab = self.lab(t)
            if lab is not None:
                for a in atoms_in(lab).tolist():
                    self.bad.setdefault(a, "reaches the model output")
        return out

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self._inside += 1

    def _exit_rule(self, rule, path: str):
        def post(module, args, output):
            self._inside -= 1
            if self._inside == 0:
                try:
                    rule(self, path, module, args, output)
                except Exception as e:  # noqa: BLE001 - as for op rules: its channels stay
                    why = f"{type(module).__name__} ({path}; its rule failed: {type(e).__name__})"
                    a = self.poison(why, *tensor_leaves(args))
                    if a is not None:
                        for o in tensor_leaves(output):
                            if o.is_floating_point():
                                self.set(o, a.expand(o.shape))

        return post

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._inside:
            return out
        from .rules import apply_rule

        name = _name(func)
        try:
            apply_rule(self, name, func, args, kwargs, out)
        except Exception as e:  # noqa: BLE001 - a rule that cannot follow an op: its channels stay
            why = f"{name or func!r} (its rule failed: {type(e).__name__})"
            a = self.poison(why, *tensor_leaves((args, kwargs)))
            if a is not None:
                for o in tensor_leaves(out):
                    if o.is_floating_point():
                        self.set(o, a.expand(o.shape))
        return out

    # -- helpers for resolution --------------------------------------------------------------------
    def param_of(self, plabels: Tensor) -> tuple[list[str], Tensor]:
        """Parameter names and flat indices of parameter labels (<= -2)."""
        g = -(plabels + 2)  # global element index
        which = np.searchsorted(self._ends, g.numpy(), side="right")
        names = [self._order[i] for i in which]
        starts = torch.tensor([self.offsets[n] for n in names], dtype=torch.long)
        return names, g - starts
