"""Record one eager forward as a flow graph: module hooks + a TorchFunctionMode.

Every tensor seen gets a ``Meta``: the graph vertices that produced it (``producers``), the module calls
whose outputs it derives from (``srcs``, for liveness) and the outermost call that returned exactly it
(``origin``, where a gate goes).  Vertices are *leaf* module calls and merges (add/mul/cat of two or more
same-shape activations); every other op between modules is transparent and passes producers on.

Trace traps handled here (seen on Llama): ops returning their input object (``x.to(same dtype)``,
eval-mode dropout) keep the tensor's meta; in-place ops (``x += y``, ``mul_``) re-assign the meta of
the mutated object, so a residual input never looks as if the op that mutated a copy made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from .._tree import NotStubbable, encode, first_tensor, tensor_leaves
from .callstack import CallStack, call_key
from .flops import op_flops, rnn_flops
from .internal import INPLACE_DUNDER, flat_tensors, internal, is_internal


@dataclass(frozen=True)
class Meta:
    producers: frozenset = frozenset()
    srcs: frozenset = frozenset()
    origin: tuple | None = None  # (call id, tensor-leaf index in that call's output)


@dataclass
class Operand:
    producers: frozenset
    origin: tuple | None
    shape: tuple


@dataclass
class MergeRecord:
    vid: str
    kind: str
    cid: int  # enclosing call
    raw_index: int  # index among merge-named ops run directly in that call (stable across forwards)
    operands: list[Operand]
    out_shape: tuple


@dataclass
class CallRecord:
    cid: int
    path: str
    type_name: str
    k: int  # k-th call of this module in the forward
    parent: int | None
    leaf: bool
    in_producers: frozenset = frozenset()
    in_shape: tuple | None = None
    in_dtype: torch.dtype | None = None
    out_shape: tuple | None = None
    out_dtype: torch.dtype | None = None
    out_producers: frozenset = frozenset()
    structure: dict | None = None  # JSON structure of the output (None: not stubbable)
    identity_structure: dict | None = None  # same, primary output marked as "return the input"
    vertex: str | None = None
    flops: int = 0  # inclusive: everything run while this call was on the stack
    children: list[int] = field(default_factory=list)
    raw_merges: int = 0
    start: int = 0  # event order: a call that ended before another started cannot depend on it
    end: int = 0
    _in_metas: list = field(default_factory=list, repr=False)
    side_views: list = field(
        default_factory=list, repr=False
    )  # (storage ptr, offset) of non-primary inputs
    # a tensor output other than the primary one was passed to a later module call (T5's position bias)
    side_consumed: bool = False

    @property
    def key(self) -> str:
        return call_key(self.path, self.k)


def _views(ts: list[torch.Tensor]) -> list[tuple[int, int]]:
    out = []
    for t in ts:
        try:
            out.append((t.untyped_storage().data_ptr(), t.storage_offset()))
        except (
            RuntimeError,
            NotImplementedError,
            AttributeError,
        ):  # nested, sparse, meta: no plain storage
            pass
    return out


def indexed_inputs(calls: list[CallRecord]) -> bool:
    """True if these calls (the layers of one list) got different slices of one tensor as side inputs:
    the parent indexes a per-layer tensor by the loop index (Gemma-3n style per-layer inputs
    ``per_layer_inputs[:, :, i]``), so deleting a layer would hand the next one the wrong slice."""
    seen: dict[int, set[int]] = {}
    for c in calls:
        for ptr, off in c.side_views:
            if ptr:
                seen.setdefault(ptr, set()).add(off)
    return any(len(offs) > 1 for offs in seen.values())


class Recorder(CallStack):
    """Hooks every module of ``model`` and records the graph of one forward."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.graph = nx.DiGraph()
        self.calls: list[CallRecord] = []
        self.merges: list[MergeRecord] = []
        self.consumers: dict[int, set[str]] = {}
        self.metas = (
            WeakTensorKeyDictionary()
        )  # tensor -> Meta; entries go with their tensors (memory)
        self._merge_counts: dict[tuple, int] = {}
        self._events = 0

    # -- metas ---------------------------------------------------------------------------------
    def meta(self, t: torch.Tensor) -> Meta | None:
        return self.metas.get(t)

    def set_meta(self, t: torch.Tensor, m: Meta) -> None:
        self.metas[t] = m

    def _consume(self, vid: str, metas: list[Meta]) -> None:
        for m in metas:
            for p in m.producers:
                self.graph.add_edge(p, vid)
            for c in m.srcs:
                self.consumers.setdefault(c, set()).add(vid)

    # -- inputs / outputs ------------------------------------------------------------------------
    def add_inputs(self, inputs: Any) -> None:
        named: list[tuple[str, Any]]
        if isinstance(inputs, torch.Tensor):
            named = [("0", inputs)]
        elif isinstance(inputs, Mapping):
            named = list(inputs.items())
        else:
            named = [(str(i), x) for i, x in enumerate(inputs)]
        for name, x in named:
            for j, t in enumerate(tensor_leaves(x)):
                vid = f"input:{name}" if isinstance(x, torch.Tensor) else f"input:{name}.{j}"
                self.graph.add_node(
                    vid,
                    kind="input",
                    path="",
                    params=0,
                    flops=0,
                    in_shape=None,
                    out_shape=tuple(t.shape),
                )
                self.set_meta(t, Meta(frozenset([vid])))

    def add_output(self, out: Any) -> None:
        self.graph.add_node(
            "output", kind="output", path="", params=0, flops=0, in_shape=None, out_shape=None
        )
        metas = [m for t in tensor_leaves(out) if (m := self.meta(t)) is not None]
        self._consume("output", metas)

    # -- module calls ------------------------------------------------------------------------------
    def open_frame(
        self, module: nn.Module, path: str, k: int, leaf: bool, args: tuple, kwargs: dict
    ) -> CallRecord:
        with internal():
            parent = self.stack[-1] if self.stack else None
            rec = CallRecord(
                cid=len(self.calls),
                path=path,
                type_name=type(module).__name__,
                k=k,
                parent=parent.cid if parent else None,
                leaf=leaf,
            )
            if parent:
                parent.children.append(rec.cid)
            rec.start = self._events
            self._events += 1
            x = first_tensor(args, kwargs)
            if x is not None:
                m = self.meta(x)
                rec.in_producers = m.producers if m else frozenset()
                rec.in_shape, rec.in_dtype = tuple(x.shape), x.dtype
            rec._in_metas = [
                (t, m) for t in flat_tensors(args, kwargs) if (m := self.meta(t)) is not None
            ]
            rec.side_views = _views([t for t in flat_tensors(args, kwargs) if t is not x])
            for _, m in rec._in_metas:
                if m.origin is not None and m.origin[1] > 0:
                    self.calls[m.origin[0]].side_consumed = True
            self.calls.append(rec)
            return rec

    def close_frame(
        self, rec: CallRecord, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        with internal():
            rec.end = self._events
            self._events += 1
            outs = tensor_leaves(output)
            x = first_tensor(args, kwargs)
            if rec.leaf and isinstance(module, nn.RNNBase):
                f = rnn_flops(module, args)
                for r in self.stack + [rec]:
                    r.flops += f
            if rec.leaf:
                self._post_leaf(module, rec, outs)
            else:
                for i, t in enumerate(outs):
                    m = self.meta(t) or Meta()
                    self.set_meta(t, Meta(m.producers, m.srcs | {rec.cid}, (rec.cid, i)))
            if outs:
                y = outs[0]
                rec.out_shape, rec.out_dtype = tuple(y.shape), y.dtype
                m = self.meta(y)
                rec.out_producers = m.producers if m else frozenset()
            try:
                rec.structure = encode(output, x)
                rec.identity_structure = encode(output, x, identity_index=0) if outs else None
            except NotStubbable:
                rec.structure = rec.identity_structure = None
            rec._in_metas = []

    def _post_leaf(self, module: nn.Module, rec: CallRecord, outs: list[torch.Tensor]) -> None:
        ins = rec._in_metas
        has_params = any(True for _ in module.parameters(recurse=False))
        if (
            not has_params
            and len(outs) == 1
            and len(ins) == 1
            and outs[0] is ins[0][0]
            and outs[0]._version == ins[0][0]._version
        ):
            return  # nn.Identity, eval-mode dropout: the same tensor passes through, no vertex
        vid = rec.path if rec.k == 0 else f"{rec.path}#{rec.k}"
        rec.vertex = vid
        self.graph.add_node(
            vid,
            kind=rec.type_name,
            path=rec.path,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            flops=0,
            in_shape=rec.in_shape,
            out_shape=tuple(outs[0].shape) if outs else None,
            cid=rec.cid,
        )
        self._consume(vid, [m for _, m in ins])
        for i, t in enumerate(outs):
            self.set_meta(t, Meta(frozenset([vid]), frozenset([rec.cid]), (rec.cid, i)))

    # -- function mode ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_internal() or not self.stack:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        top = self.stack[-1]
        kind, key = self.next_merge(name) or (None, None)
        out = func(*args, **kwargs)
        with internal():
            f = op_flops(name, args, kwargs, out)
            if f:
                for r in self.stack:
                    r.flops += f
            if not top.leaf:
                self._track(name, kind, key, args, kwargs, out)
        return out

    def _track(
        self, name: str, kind: str | None, key: tuple | None, args: tuple, kwargs: dict, out: Any
    ) -> None:
        ins = [
            (t, m)
            for t in flat_tensors(args, kwargs)
            if (m := self.meta(t)) is not None and m.producers
        ]
        if not ins:
            return
        operands = self._merge_operands(kind, args, kwargs)
        if operands is not None and isinstance(out, torch.Tensor):
            rec = self.stack[-1]
            n = self._merge_counts.get((rec.cid, kind), 0)
            self._merge_counts[(rec.cid, kind)] = n + 1
            vid = f"{rec.path}{'' if rec.k == 0 else '#' + str(rec.k)}::{kind}{n}"
            metas = [self.meta(t) for t in operands]
            self.graph.add_node(
                vid,
                kind=kind,
                path=rec.path,
                params=0,
                flops=0,
                in_shape=tuple(operands[0].shape),
                out_shape=tuple(out.shape),
                cid=rec.cid,
            )
            self._consume(vid, metas)
            self.merges.append(
                MergeRecord(
                    vid,
                    kind,
                    rec.cid,
                    key[1],
                    [
                        Operand(m.producers, m.origin, tuple(t.shape))
                        for t, m in zip(operands, metas)
                    ],
                    tuple(out.shape),
                )
            )
            new = Meta(frozenset([vid]))
        else:
            new = Meta(
                frozenset().union(*(m.producers for _, m in ins)),
                frozenset().union(*(m.srcs for _, m in ins)),
                ins[0][1].origin if len(ins) == 1 else None,
            )
        for t in tensor_leaves(out) if isinstance(out, (torch.Tensor, tuple, list)) else []:
            self.set_meta(t, new)
        inplace = (name.endswith("_") and not name.startswith("_")) or name in INPLACE_DUNDER
        target = (
            kwargs.get("out")
            if isinstance(kwargs.get("out"), torch.Tensor)
            else (args[0] if inplace and args and isinstance(args[0], torch.Tensor) else None)
        )
        if target is not None:
            self.set_meta(target, new)

    def _merge_operands(
        self, kind: str | None, args: tuple, kwargs: dict
    ) -> list[torch.Tensor] | None:
        # A merge joins >= 2 traced activations; adding a bias, a mask or a parameter is transparent.
        if kind is None:
            return None
        if kind == "cat":
            seq = args[0] if args else kwargs.get("tensors", ())
            ts = [t for t in seq if isinstance(t, torch.Tensor)]
            tracked = [t for t in ts if (m := self.meta(t)) is not None and m.producers]
            return ts if len(tracked) >= 2 and len(tracked) == len(ts) else None
        if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return None
        a, b = args[0], args[1]
        ma, mb = self.meta(a), self.meta(b)
        if not (ma and mb and ma.producers and mb.producers) or a.shape != b.shape:
            return None
        return [a, b]
