"""Engine: the gated model on the calibration batches — reference outputs, losses, and ablations with
replay of everything upstream of the ablated candidate.

Replay: removing candidate c does not change anything computed before c's module is called.  During a
reference pass the outputs of the modules that finish before c starts (the maximal ones: siblings of c's
ancestors) are recorded; the ablated pass then returns those recordings instead of running the modules,
so a candidate at depth i recomputes only the suffix.  Gates take α ∈ {0, 1} in every ablation, where
re-applying a gate to a replayed (already gated) output changes nothing.  Recordings are keyed by call
(``"path#k"``, the trace's numbering), so a module called several times (ALBERT's shared layer) replays
its earlier calls and runs its later ones; a replayed call makes no calls inside it, and the call counts
(the engine's and the per-call gates') move past those, so no call is handed another call's recording.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.utils import _pytree as pytree

from .._runtime import call_model, eval_mode
from .._tree import tensor_leaves
from ..adapters import scoring_kwargs
from ..data import batch_size, split_batch
from ..errors import InputError
from ..gates import Gates
from ..graph import Candidate, FlowGraph
from ..graph.callstack import call_key
from ..graph.internal import is_internal
from .losses import LossSpec, resolve


def _clone(obj: Any) -> Any:
    return pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, obj)


def _shallow(obj: Any) -> Any:
    """New containers (dicts, lists, tuples, model outputs) around the same tensors: a caller that
    replaces an element of a recorded output (``out["h"] = 2 * out["h"]``) cannot change the recording,
    and no tensor data is copied."""
    return pytree.tree_map(lambda x: x, obj)


def replay_sources(graph: FlowGraph, c: Candidate) -> list[str]:
    """Call keys (``"path#k"``) of the maximal module calls that finish before ``c``'s call starts.
    Recordings are kept per call, so the earlier calls of a shared module (ALBERT's layer) replay too
    and no call is ever handed another call's output."""
    me = graph.call(c.cid)
    out, a = [], me
    while a.parent is not None:
        parent = graph.call(a.parent)
        out += [graph.call(d).key for d in parent.children if graph.call(d).end < me.start]
        a = parent
    return out


class Engine:
    """Runs ``graph.model`` with gates on calibration ``batches`` and evaluates losses.

    >>> eng = Engine(graph, batches, "distill")
    >>> with eng:
    ...     base = eng.loss()                       # all α = 1
    ...     dl = eng.loss(removed=["model.layers.3:layer"]) - base
    """

    def __init__(
        self,
        graph: FlowGraph,
        batches: Sequence[Any],
        loss: LossSpec = "distill",
        gates: Gates | None = None,
        progress: bool = True,
    ):
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
        return scoring_kwargs(model)

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
        """Loss of output ``out`` on batch i; the loss also gets the original model's output on batch i
        (``refs[i]``, recorded without gradient: gradients flow through ``out`` only), in new containers."""
        v = self.fn(out, self.batches[i], _shallow(self.refs[i]) if self.refs else None)
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
        for cand_id in removed:
            a[idx[cand_id]] = 0.0
        return a

    def check_finite(self) -> float:
        """The calibration loss of the original model (every α = 1), computed from the recorded
        references without another pass; InputError naming the first batch whose original output or
        loss is NaN/inf: nothing may be scored, planned or fitted on it."""
        self.references()
        losses = []
        for i, ref in enumerate(self.refs):
            bad = [
                t
                for t in tensor_leaves(ref)
                if t.is_floating_point() and not torch.isfinite(t).all()
            ]
            if bad:
                raise InputError(
                    f"the model's output on calibration batch {i} contains NaN or inf (before any "
                    f"removal): check that batch's inputs and the model's weights, or leave it out"
                )
            with torch.no_grad():
                v = self.batch_loss(i, self.refs[i])
            if not torch.isfinite(v).all():
                raise InputError(
                    f"the calibration loss of batch {i} is {float(v)} before any removal: check the "
                    f"batch's labels/inputs and the loss function"
                )
            losses.append(v)
        return self.mean(losses)

    def loss(self, removed: Sequence[str] = ()) -> float:
        """Calibration loss with ``removed`` candidates gated off (full forward, no replay)."""
        self.references()
        with self.alphas(self.alpha_for(removed)), torch.no_grad():
            return self.mean([self.batch_loss(i, self.run(i)) for i in range(len(self.batches))])

    # -- replay ---------------------------------------------------------------------------------------
    @staticmethod
    def _versions(obj: Any) -> list[int]:
        return [t._version for t in tensor_leaves(obj)]

    def _by_path(self, keys: Iterable[str]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for key in keys:
            path, _, k = key.rpartition("#")
            out.setdefault(path, set()).add(int(k))
        return out

    @contextmanager
    def recording(self, keys: Iterable[str]) -> Iterator[dict]:
        """Record the (gated) outputs of the module calls ``keys`` (``"path#k"``: the k-th call of that
        module in the forward, as the trace numbers it) during the forwards in the block.

        The tensors are kept as they are, not copied (their containers are): an output that is modified
        in place later in the pass (``relu_(bn(x))``; its version counter moves) is dropped on exit, and
        its module simply runs again in the replayed passes."""
        store: dict[str, Any] = {}
        seen: dict[str, list[int]] = {}
        want = self._by_path(keys)
        counts = {p: 0 for p in want}
        running: dict[str, list[int]] = {p: [] for p in want}  # numbered at entry, matched at exit

        def pre(p: str):
            def fn(m, a):
                if not is_internal():
                    running[p].append(counts[p])
                    counts[p] += 1

            return fn

        def post(p: str):
            def fn(m, a, out):
                if is_internal() or not running[p]:
                    return
                k = running[p].pop()
                if k in want[p]:
                    key = call_key(p, k)
                    store[key], seen[key] = _shallow(out), self._versions(out)

            return fn

        def reset(m, a):
            for p in counts:
                counts[p] = 0
                running[p].clear()

        hooks = [self.model.register_forward_pre_hook(reset, prepend=True)]
        for p in want:
            hooks += [
                self._modules[p].register_forward_pre_hook(pre(p)),
                self._modules[p].register_forward_hook(post(p)),
            ]
        try:
            yield store
        finally:
            for h in hooks:
                h.remove()
            for key in [key for key in store if self._versions(store[key]) != seen[key]]:
                del store[key]

    @contextmanager
    def replaying(self, store: dict, keys: Sequence[str]) -> Iterator[None]:
        """The module calls ``keys`` return their recorded outputs instead of running; the other calls of
        those modules run as usual.  Calls are counted per module as the trace counts them; a call that
        returns a recording makes no calls inside it, so the counts (here and the per-call gates') move
        past those.  The recordings are handed out as they are; one that a later module modifies in
        place (``x += f(x)`` on a replayed input) is dropped after the pass, so it is never reused."""
        keys = [k for k in keys if k in store]
        active = set(keys)
        paths = list(self._by_path(keys))
        cids = self.__dict__.setdefault("_cids", {c.key: c.cid for c in self.graph.calls})
        counts = {p: 0 for p in paths}
        own = {
            p: vars(self._modules[p]).get("forward") for p in paths
        }  # e.g. accelerate's wrappers
        versions = {k: self._versions(store[k]) for k in keys}

        def replay(p: str, run):
            def forward(*a, **kw):
                if is_internal():
                    return run(*a, **kw)
                j = counts[p]
                counts[p] = j + 1
                key = call_key(p, j)
                if key not in active:
                    return run(*a, **kw)
                for q, n in self.graph.inner_calls(cids[key]).items():
                    if q in counts:
                        counts[q] += n
                self.gates.skipped(cids[key])
                return _shallow(store[key])

            return forward

        def reset(m, a):
            for p in counts:
                counts[p] = 0

        hook = self.model.register_forward_pre_hook(reset, prepend=True)
        for p in paths:
            self._modules[p].forward = replay(p, self._modules[p].forward)
        try:
            yield
        finally:
            hook.remove()
            for p in paths:
                if own[p] is None:
                    del self._modules[p].forward
                else:
                    self._modules[p].forward = own[p]
            for k in keys:
                if k in store and self._versions(store[k]) != versions[k]:
                    del store[k]
