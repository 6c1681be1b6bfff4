"""Engine: the gated model on the calibration batches — reference outputs, losses, and ablations with
replay of everything upstream of the ablated candidate.

Replay: removing candidate c does not change anything computed before c's module is called.  During a
reference pass the outputs of the modules that finish before c starts (the maximal ones: siblings of c's
ancestors) are recorded; the ablated pass then returns those recordings instead of running the modules,
so a candidate at depth i recomputes only the suffix.  Gates take α ∈ {0, 1} in every ablation, where
re-applying a gate to a replayed (already gated) output changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import inspect
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch.utils import _pytree as pytree

from .._tree import tensor_leaves
from ..data import batch_size, split_batch
from ..gates import Gates
from ..graph import Candidate, FlowGraph
from ..graph.trace import call_model, eval_mode
from .losses import LossSpec, resolve


def _clone(obj: Any) -> Any:
    return pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, obj)


def _shallow(obj: Any) -> Any:
    """New containers (dicts, lists, tuples, model outputs) around the same tensors: a caller that
    replaces an element of a recorded output (``out["h"] = 2 * out["h"]``) cannot change the recording,
    and no tensor data is copied."""
    return pytree.tree_map(lambda x: x, obj)


def replay_sources(graph: FlowGraph, c: Candidate) -> list[str]:
    """Paths of the maximal modules that finish before ``c``'s module starts (each called once)."""
    me = graph.call(c.cid)
    out, a = [], me
    while a.parent is not None:
        parent = graph.call(a.parent)
        out += [graph.call(d).path for d in parent.children
                if graph.call(d).end < me.start and len(graph.calls_of(graph.call(d).path)) == 1]
        a = parent
    return out


class Engine:
    """Runs ``graph.model`` with gates on calibration ``batches`` and evaluates losses.

    >>> eng = Engine(graph, batches, "distill")
    >>> with eng:
    ...     base = eng.loss()                       # all α = 1
    ...     dl = eng.loss(removed=["model.layers.3:layer"]) - base
    """

    def __init__(self, graph: FlowGraph, batches: Sequence[Any], loss: LossSpec = "distill",
                 gates: Gates | None = None, progress: bool = True):
        self.graph, self.model = graph, graph.model
        self.batches = list(batches)
        self.sizes = [batch_size(b) for b in self.batches]
        self.fn, self.per_sample = resolve(loss)
        self.gates = gates or Gates(graph)
        self.progress = progress
        self.refs: list[Any] = []  # original-model outputs per batch (α = 1)
        self._extra = self.extra_kwargs(self.model)
        self._modules = dict(self.model.named_modules())
        self._ctx: list = []

    # -- context: eval mode, gates installed, parameters frozen -------------------------------------
    def __enter__(self) -> "Engine":
        self._ctx = [eval_mode(self.model)]
        self._ctx[0].__enter__()
        self._flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._flags:
            p.requires_grad_(False)  # derivatives are taken with respect to α only
        try:
            self.gates.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for p, f in self._flags:
            p.requires_grad_(f)
        self._ctx[0].__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        self.gates.__exit__(*exc)
        self._restore()

    @property
    def candidates(self) -> list[Candidate]:
        return self.gates.candidates

    @staticmethod
    def extra_kwargs(model: Any) -> dict:
        """Keyword inputs added to dict batches: HF decoders run without a KV cache during scoring
        (nothing is generated; it also keeps replay free of side effects)."""
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return {}
        return {"use_cache": False} if "use_cache" in params else {}

    def inputs(self, i: int) -> Any:
        x, _ = split_batch(self.batches[i])
        if isinstance(x, Mapping):
            return {**self._extra, **x}
        return x

    def run(self, i: int) -> Any:
        """Model output on batch i with the current gates."""
        return call_model(self.model, self.inputs(i))

    def references(self) -> list[Any]:
        """Original-model outputs (every α = 1) for each batch, computed once."""
        if not self.refs:
            with self.alphas(self.alpha_for()), torch.no_grad():
                self.refs = [_clone(self.run(i)) for i in range(len(self.batches))]
        return self.refs

    def batch_loss(self, i: int, out: Any, per_sample: bool = False) -> torch.Tensor:
        v = self.fn(out, self.batches[i], self.refs[i] if self.refs else None)
        return v if per_sample else v.mean()

    def mean(self, values: Sequence[torch.Tensor | float]) -> float:
        return float(sum(float(v) * n for v, n in zip(values, self.sizes)) / sum(self.sizes))

    # -- α helpers ----------------------------------------------------------------------------------
    @contextmanager
    def alphas(self, alpha: torch.Tensor) -> Iterator[None]:
        saved = self.gates.alpha
        self.gates.alpha = alpha
        try:
            yield
        finally:
            self.gates.alpha = saved

    def alpha_for(self, removed: Sequence[str] = ()) -> torch.Tensor:
        a = torch.ones(len(self.candidates), device=self.gates.device)
        idx = self.gates.index
        for cid in removed:
            a[idx[cid]] = 0.0
        return a

    def loss(self, removed: Sequence[str] = ()) -> float:
        """Calibration loss with ``removed`` candidates gated off (full forward, no replay)."""
        self.references()
        with self.alphas(self.alpha_for(removed)), torch.no_grad():
            return self.mean([self.batch_loss(i, self.run(i)) for i in range(len(self.batches))])

    # -- replay ---------------------------------------------------------------------------------------
    @staticmethod
    def _versions(obj: Any) -> list[int]:
        return [t._version for t in tensor_leaves(obj)]

    @contextmanager
    def recording(self, paths: set[str]) -> Iterator[dict]:
        """Record the (gated) outputs of modules ``paths`` during the forwards in the block.

        The tensors are kept as they are, not copied (their containers are): an output that is modified
        in place later in the pass (``relu_(bn(x))``; its version counter moves) is dropped on exit, and
        its module simply runs again in the replayed passes."""
        store: dict[str, Any] = {}
        seen: dict[str, list[int]] = {}

        def keep(p: str, out: Any) -> None:
            store[p], seen[p] = _shallow(out), self._versions(out)

        hooks = [self._modules[p].register_forward_hook(lambda m, a, out, p=p: keep(p, out)) for p in paths]
        try:
            yield store
        finally:
            for h in hooks:
                h.remove()
            for p in [p for p in store if self._versions(store[p]) != seen[p]]:
                del store[p]

    @contextmanager
    def replaying(self, store: dict, paths: Sequence[str]) -> Iterator[None]:
        """Modules ``paths`` return their recorded outputs instead of running (those without a recording
        run as usual).  The recordings are handed out as they are; one that a later module modifies in
        place (``x += f(x)`` on a replayed input) is dropped after the pass, so it is never reused."""
        paths = [p for p in paths if p in store]
        own = {p: vars(self._modules[p]).get("forward") for p in paths}  # e.g. accelerate's wrappers
        versions = {p: self._versions(store[p]) for p in paths}
        for p in paths:
            self._modules[p].forward = (lambda *a, _o=store[p], **k: _shallow(_o))
        try:
            yield
        finally:
            for p in paths:
                if own[p] is None:
                    del self._modules[p].forward
                else:
                    self._modules[p].forward = own[p]
                if self._versions(store[p]) != versions[p]:
                    del store[p]
