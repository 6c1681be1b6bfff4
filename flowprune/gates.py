"""Gates: one scalar α per candidate, installed as forward hooks (α = 1 as trained, α = 0 = removal).

* branch: the gated module's output (the tensor that enters the merge) is multiplied by α;
* layer:  output = x + α·(f(x) − x), x being the block's primary input.

On entry a numerical self-check runs one forward with every α = 0 on the graph's example inputs and
looks at each candidate's merge (its branch operand must be 0 and the merge output the sum of the other
operands) and each layer (output == input).  A candidate failing it is dropped with a warning naming it.

A per-call candidate (``"encoder.layer:layer@2"``, a module called several times per forward) is gated on
that call only: a pre-hook numbers the module's calls (the count restarts at every forward of the root
model, by a root pre-hook), and one forward hook per module applies the gate of the call that returns.
Calls are numbered at entry and matched at exit through a stack, so re-entrant and nested shared modules
are numbered as the trace numbers them.  Under replay (score/engine.py) a module that returns a recording
does not make the calls inside it; the engine reports it (``skipped``) and the counts move past them.

>>> with Gates(graph) as gates:
...     with gates.removed(["model.layers.1:layer"]):
...         logits = model(**batch).logits
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ._runtime import call_model, eval_mode
from ._tree import first_tensor, replace_tensor_leaf, tensor_leaves
from .errors import CandidateError
from .graph import Candidate, FlowGraph
from .graph.internal import internal, is_internal
from .graph.tap import Tap


class Gates:
    """Context manager installing one gate per candidate on ``graph.model``.

    ``alpha`` is a float tensor of shape [C] (C = len(gates.candidates)); it may be replaced by any
    tensor of that shape (e.g. one that requires grad) to differentiate the loss with respect to it.
    """

    def __init__(
        self,
        graph: FlowGraph,
        candidates: Sequence[Candidate] | None = None,
        check: bool = True,
        atol: float = 1e-5,
    ):
        self.graph = graph
        self.model = graph.model
        self.candidates: list[Candidate] = list(
            graph.candidates() if candidates is None else candidates
        )
        self.check = check
        self.atol = atol
        self.failed: dict[str, str] = {}
        self._handles: dict[str, object] = {}
        self._counts: dict[nn.Module, int] = {}  # per-call gating: calls so far in this forward
        # indices of the calls running now (re-entrance)
        self._open: dict[nn.Module, list[int]] = {}
        # per-call layer gates: module -> {call: candidate index}
        self._keep_at: dict[nn.Module, dict[int, int]] = {}
        # layer gates: the block input as it was when the call started, per candidate (a stack: calls
        # may nest); a block may write into its input (x += f(x)), and x + α(f(x) − x) needs the original
        self._saved: dict[int, list] = {}
        p = next(self.model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.alpha = torch.ones(len(self.candidates), device=self.device)
        self._modules = dict(self.model.named_modules())

    # -- installation ------------------------------------------------------------------------------
    def __enter__(self) -> "Gates":
        try:
            self._install_all()
            if self.check:
                self._self_check()
        except BaseException:
            self.__exit__(None, None, None)  # never leave hooks on the user's model
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        self._saved.clear()

    def _keep(self, i: int, args: tuple, kwargs: dict) -> None:
        if self._active[i]:  # a gate at α = 1 without gradient is not applied: nothing to keep
            x = first_tensor(args, kwargs)
            self._saved.setdefault(i, []).append(None if x is None else x.clone())

    def _keeper(self, i: int) -> Callable:
        def keep(module, args, kwargs):
            self._keep(i, args, kwargs)

        keep._flowprune_gate = True
        return keep

    def _install_all(self) -> None:
        shared: dict[nn.Module, dict[int, Callable]] = {}
        self._keep_at = {}
        for i, c in enumerate(self.candidates):
            module = self._modules[c.path]
            if c.call is None:
                self._handles[c.id] = module.register_forward_hook(
                    self._hook(i, c), with_kwargs=True
                )
                if c.kind == "layer":
                    self._handles[f"@in:{c.id}"] = module.register_forward_pre_hook(
                        self._keeper(i), with_kwargs=True
                    )
            else:
                shared.setdefault(module, {})[c.call] = self._hook(i, c)
                if c.kind == "layer":
                    self._keep_at.setdefault(module, {})[c.call] = i
        paths = {m: p for p, m in self._modules.items()}
        self._counts = {m: 0 for m in shared}
        self._open = {m: [] for m in shared}
        for m, fns in shared.items():
            n = len(self.graph.calls_of(paths[m]))
            self._handles[f"@count:{paths[m]}"] = m.register_forward_pre_hook(
                self._counter(n), with_kwargs=True
            )
            self._handles[f"@gate:{paths[m]}"] = m.register_forward_hook(
                self._dispatch(fns), with_kwargs=True
            )
        if shared:
            self._handles["@reset"] = self.model.register_forward_pre_hook(
                self._resetter(), prepend=True
            )

    def _counter(self, n: int) -> Callable:
        def count(module, args, kwargs):
            if is_internal():  # as the trace: flowprune's own calls are not counted
                return
            k = self._counts[module]
            self._counts[module] = k + 1
            self._open[module].append(k % n if n else k)  # wraps around if a forward was cut short
            i = self._keep_at.get(module, {}).get(self._open[module][-1])
            if i is not None:
                self._keep(i, args, kwargs)

        count._flowprune_gate = True
        return count

    def _dispatch(self, fns: dict[int, Callable]) -> Callable:
        def dispatch(module, args, kwargs, output):
            if is_internal() or not self._open[module]:
                return None
            fn = fns.get(self._open[module].pop())
            return None if fn is None else fn(module, args, kwargs, output)

        dispatch._flowprune_gate = True
        return dispatch

    def _resetter(self) -> Callable:
        # a closure, not a bound method: deepcopy (apply) copies a bound method's whole Gates object
        def reset(module, args):
            for m in self._counts:
                self._counts[m] = 0
                self._open[m].clear()

        reset._flowprune_gate = True
        return reset

    def skipped(self, cid: int) -> None:
        """Replay handed out a recording for traced call ``cid``: the calls inside it did not run, so the
        per-call counts move past them (the next call of a shared module keeps its traced index)."""
        if not self._counts:
            return
        for path, n in self.graph.inner_calls(cid).items():
            m = self._modules.get(path)
            if m in self._counts:
                self._counts[m] += n

    def _hook(self, i: int, c: Candidate):
        def branch(module, args, kwargs, output):
            if not self._active[i]:
                return None
            with internal():
                a = self.alpha[i]
                # every float output scales, not only the one entering the merge: a branch's outputs all
                # go to that merge (UperNet's list of pooled maps into one concat) and its stub zeros all
                out = output
                for k in range(len(tensor_leaves(output))):
                    out = replace_tensor_leaf(
                        out,
                        k,
                        lambda y: (
                            y * a.to(device=y.device, dtype=y.dtype)
                            if y.is_floating_point() or k == c.out_index
                            else y
                        ),
                    )
                return out

        def layer(module, args, kwargs, output):
            if not self._active[i]:
                return None
            with internal():
                a = self.alpha[i]
                kept = self._saved.get(i)
                x = kept.pop() if kept else first_tensor(args, kwargs)
                out = replace_tensor_leaf(
                    output, 0, lambda y: x + a.to(device=y.device, dtype=y.dtype) * (y - x)
                )
                # side outputs (T5's position bias handed to the next blocks) go to zero with α, as the
                # identity stub that replaces a removed layer returns zeros for them
                for k in range(1, len(tensor_leaves(out))):
                    out = replace_tensor_leaf(
                        out,
                        k,
                        lambda z: (
                            z * a.to(device=z.device, dtype=z.dtype) if z.is_floating_point() else z
                        ),
                    )
                return out

        fn = branch if c.kind == "branch" else layer
        fn._flowprune_gate = True  # apply() strips these from the copies it makes
        return fn

    @property
    def alpha(self) -> torch.Tensor:
        """Gate values [C]; any tensor of that shape (one that requires grad too) may be assigned."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: torch.Tensor) -> None:
        self._alpha = value
        self._saved.clear()  # inputs kept by a forward that raised before its gates ran
        # a gate at exactly 1 without gradient changes nothing: its hook returns early (one check per
        # assignment, not one device sync per hook call)
        self._active = (
            [True] * len(value)
            if value.requires_grad or value.dim() != 1
            else (value.detach() != 1).tolist()
        )

    @property
    def index(self) -> dict[str, int]:
        """Candidate id -> position in ``alpha``."""
        return {c.id: i for i, c in enumerate(self.candidates)}

    # -- setting α ------------------------------------------------------------------------------------
    def set(self, values: dict[str, float]) -> None:
        """Set α of the named candidates (others unchanged)."""
        idx = self.index
        alpha = self.alpha.detach().clone().to(self.device)
        for cand_id, v in values.items():
            if cand_id not in idx:
                raise CandidateError(
                    f"{cand_id!r} is not gated here"
                    + (f": {self.failed[cand_id]}" if cand_id in self.failed else "")
                )
            alpha[idx[cand_id]] = v
        self.alpha = alpha

    def reset(self) -> None:
        """All α back to 1."""
        self.alpha = torch.ones(len(self.candidates), device=self.device)

    @contextmanager
    def removed(self, ids: Iterable[str]) -> Iterator[None]:
        """Within the block, the candidates ``ids`` are removed (α = 0)."""
        saved = self.alpha
        self.set({cand_id: 0.0 for cand_id in ids})
        try:
            yield
        finally:
            self.alpha = saved

    # -- self-check -------------------------------------------------------------------------------------
    def _self_check(self) -> None:
        if self.graph.example_inputs is None or not self.candidates:
            return
        merges = {m.vid: m for m in self.graph.merges}
        want_m = {
            (self.graph.call(merges[c.merge].cid).key, merges[c.merge].raw_index)
            for c in self.candidates
            if c.kind == "branch"
        }
        want_c = {self.graph.call(c.cid).key for c in self.candidates if c.kind == "layer"}
        captured: dict = {}
        tap = Tap(
            self.model,
            merges=want_m,
            calls=want_c,
            # copies: an in-place op after the merge (relu(x + f(x), inplace=True)) must not change them
            on_merge=lambda key, ops, res: captured.update(
                {("ops", key): [o.clone() for o in ops], ("res", key): res.clone()}
            ),
            on_call=lambda key, x, y: captured.update({("in", key): x, ("out", key): y.clone()}),
        )
        saved = self.alpha
        self.alpha = torch.zeros(len(self.candidates), device=self.device)
        try:
            with eval_mode(self.model), torch.no_grad(), tap:
                call_model(self.model, self.graph.example_inputs)
        finally:
            self.alpha = saved
        bad: list[tuple[Candidate, str]] = []
        for c in self.candidates:
            why = self._check_one(c, merges, captured)
            if why:
                bad.append((c, why))
        for c, why in bad:
            self.failed[c.id] = why
            h = self._handles.pop(c.id, None)  # per-call gates share their module's hooks
            if h is not None:
                h.remove()
            warnings.warn(f"flowprune: dropping candidate {c.id}: {why}", stacklevel=3)
        if bad:
            keep = [i for i, c in enumerate(self.candidates) if c.id not in self.failed]
            self.candidates = [self.candidates[i] for i in keep]
            for h in self._handles.values():
                h.remove()
            self._handles.clear()
            self._install_all()
            self.alpha = saved[keep]

    def _check_one(self, c: Candidate, merges: dict, captured: dict) -> str | None:
        tol = dict(atol=self.atol, rtol=1e-5)
        if c.kind == "layer":
            key = self.graph.call(c.cid).key
            x, y = captured.get(("in", key)), captured.get(("out", key))
            if x is None or y is None:
                return "the layer was not called in the check forward"
            if x.shape != y.shape or not torch.allclose(x, y, **tol):
                return "with alpha=0 the layer output differs from its input"
            return None
        m = merges[c.merge]
        key = (self.graph.call(m.cid).key, m.raw_index)
        ops, res = captured.get(("ops", key)), captured.get(("res", key))
        if ops is None or res is None or len(ops) <= c.operand:
            return f"its merge {c.merge} did not run in the check forward"
        if not torch.allclose(ops[c.operand], torch.zeros_like(ops[c.operand]), **tol):
            return f"with alpha=0 its output does not reach {c.merge} as zeros (an op between them is not linear)"
        rest = [o for k, o in enumerate(ops) if k != c.operand]
        if m.kind == "add" and not torch.allclose(
            res, sum(rest[1:], rest[0]).expand_as(res), **tol
        ):
            return f"with alpha=0 {c.merge} does not equal the sum of its other inputs"
        return None
