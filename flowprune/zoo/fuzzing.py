"""Fuzzing flowprune with random architectures (``random_nets``): the checks and the bookkeeping shared
by ``benchmarks/fuzz.py`` and ``tests/test_fuzz.py``.

For one ``NetSpec``: build the model, trace it, list the candidates, enter ``Gates`` (its self-check),
then for every candidate (and one drawn set of candidates together) compare the gated model with
``flowprune.apply``'s rewritten copy on the example input and on a bigger one (atol 1e-5), and the
measured parameter drop with the prediction; last, the caller's model must be left as it was.

Outcome categories: a *crash* is an exception of flowprune's own making (or of running the model it
rewrote); *refused* is a ``FlowpruneError``; *wrong* a rewritten output that differs from the gated
one; *params* a parameter drop that differs from the prediction; *modified* a caller's model changed.
"""

from __future__ import annotations

import re
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils import _pytree as pytree

import flowprune
from flowprune._tree import tensor_leaves
from flowprune.graph.trace import call_model

from .random_nets import ACTS, KINDS, NORMS, VARIANTS, Block, NetSpec, build, example_inputs

ATOL = 1e-5
PKG = str(Path(flowprune.__file__).parent)
Pick = Callable[[list[str]], list[str]]  # candidate ids -> the ids to remove together


@dataclass
class Failure:
    category: str  # crash | refused | wrong | params | modified | invalid
    stage: str  # trace | candidates | gates | gated | plan | apply | rewritten | untouched | build
    key: (
        tuple  # what makes two failures "the same": category, stage, error type, where / block kind
    )
    detail: str
    ids: tuple[str, ...] = ()


@dataclass
class Outcome:
    spec: NetSpec
    traced: bool = False
    candidates: int = 0
    dropped: int = 0  # candidates the gates' self-check dropped
    rewrites: int = 0
    equal: int = 0
    kinds: dict[str, int] = field(
        default_factory=dict
    )  # block kind -> candidates found in such blocks
    drops: list[tuple[str, str]] = field(
        default_factory=list
    )  # (block kind, why) per self-check drop
    failures: list[Failure] = field(default_factory=list)


def _where(e: BaseException) -> str:
    """The innermost flowprune frame of ``e``'s traceback (else the innermost frame): file:function."""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if f.filename.startswith(PKG) and "/zoo/" not in f.filename]
    f = (mine or frames or [None])[-1]
    return f"{Path(f.filename).name}:{f.name}" if f is not None else "?"


def _error(stage: str, e: BaseException, ids: tuple[str, ...] = ()) -> Failure:
    cat = "refused" if isinstance(e, flowprune.FlowpruneError) else "crash"
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    return Failure(
        cat, stage, (cat, stage, type(e).__name__, _where(e)), f"{type(e).__name__}: {msg}", ids
    )


def _outs(model: torch.nn.Module, x: Any) -> list[torch.Tensor]:
    x = pytree.tree_map(
        lambda t: t.clone() if isinstance(t, torch.Tensor) else t, x
    )  # the model may write into it
    with torch.no_grad():
        return [t.clone() for t in tensor_leaves(call_model(model, x)) if t.is_floating_point()]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters count once


def _block_kind(model: Any, path: str) -> str:
    kinds = getattr(model, "block_kinds", {})
    for p, k in kinds.items():
        if path == p or path.startswith(p + "."):
            return k
    return "net"


def check_spec(spec: NetSpec, pick: Pick | None = None) -> Outcome:
    """Run every check on the model ``spec`` builds; never raises (failures are recorded)."""
    out = Outcome(spec)
    try:
        model, x = build(spec)
        x2 = example_inputs(spec, extra=1)
        ref, ref2 = _outs(model, x), _outs(model, x2)
    except Exception as e:  # the generator's fault, not flowprune's
        out.failures.append(
            Failure("invalid", "build", ("invalid", type(e).__name__), f"{type(e).__name__}: {e}")
        )
        return out
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = _params(model)
    stage = "trace"
    gates = None
    try:
        graph = flowprune.trace(model, x)
        out.traced = True
        stage = "candidates"
        cands = graph.candidates()
        out.candidates = len(cands)
        for c in cands:
            k = _block_kind(model, c.path)
            out.kinds[k] = out.kinds.get(k, 0) + 1
        stage = "gates"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropped candidates are counted below
            gates = flowprune.Gates(graph).__enter__()
        out.dropped = len(gates.failed)
        for cand_id, why in gates.failed.items():
            path = next((c.path for c in cands if c.id == cand_id), cand_id)
            out.drops.append((_block_kind(model, path), re.sub(r"\S+::\w+", "<merge>", why)))
        ok = list(gates.candidates)  # the self-check's survivors
        for c in ok:
            _check_removal(out, model, graph, gates, (c.id,), x, x2, n_params, c.params)
        if pick is not None and len(ok) > 1:
            ids = tuple(pick([c.id for c in ok]))
            if len(ids) > 1:
                _check_removal(out, model, graph, gates, ids, x, x2, n_params, None)
    except Exception as e:
        out.failures.append(_error(stage, e))
    finally:
        if gates is not None:
            gates.__exit__(None, None, None)
    _check_untouched(out, model, before, x, x2, ref, ref2)
    if any(
        writes_input(b) for b in spec.conv + spec.blocks
    ):  # told apart: one known gate limitation
        for f in out.failures:
            f.key += ("spec writes into block inputs",)
    return out


def _check_removal(
    out: Outcome,
    model: Any,
    graph: Any,
    gates: Any,
    ids: tuple[str, ...],
    x: Any,
    x2: Any,
    n_params: int,
    predicted: int | None,
) -> None:
    stage = "gated"
    try:
        with gates.removed(list(ids)):
            gated, gated2 = _outs(model, x), _outs(model, x2)
        stage = "plan"
        plan = graph.plan(list(ids))
        stage = "apply"
        small = flowprune.apply(model, plan)
        stage = "rewritten"
        got, got2 = _outs(small, x), _outs(small, x2)
    except Exception as e:
        out.failures.append(_error(stage, e, ids))
        return
    out.rewrites += 1
    kind = _block_kind(model, graph.candidate(ids[0]).path) if len(ids) == 1 else "joint"
    for name, a, b in (("x", gated, got), ("bigger x", gated2, got2)):
        if len(a) != len(b) or any(
            u.shape != v.shape or not torch.allclose(u, v, atol=ATOL, rtol=0) for u, v in zip(a, b)
        ):
            diff = (
                max(
                    ((u - v).abs().max().item() if u.shape == v.shape else float("inf"))
                    for u, v in zip(a, b)
                )
                if len(a) == len(b) and a
                else float("inf")
            )
            out.failures.append(
                Failure(
                    "wrong",
                    "rewritten",
                    ("wrong", kind, name),
                    f"rewritten != gated on {name} (max |diff| {diff:.3g})",
                    ids,
                )
            )
            break
    else:
        out.equal += 1
    measured = n_params - _params(small)
    if measured != plan.params_removed or (predicted is not None and predicted != measured):
        out.failures.append(
            Failure(
                "params",
                "apply",
                ("params", kind),
                f"measured drop {measured}, plan {plan.params_removed}, candidate {predicted}",
                ids,
            )
        )


def _check_untouched(
    out: Outcome, model: Any, before: dict, x: Any, x2: Any, ref: list, ref2: list
) -> None:
    try:
        same = set(before) == set(model.state_dict()) and all(
            torch.equal(before[k], v) for k, v in model.state_dict().items()
        )
        now, now2 = _outs(model, x), _outs(model, x2)
        same = same and all(torch.equal(a, b) for a, b in zip(ref + ref2, now + now2))
        hooks = any(
            getattr(fn, "_flowprune_gate", False)
            for m in model.modules()
            for fn in m._forward_hooks.values()
        )
    except Exception as e:
        out.failures.append(_error("untouched", e))
        return
    if not same or hooks:
        out.failures.append(
            Failure(
                "modified",
                "untouched",
                ("modified",),
                "the caller's model was changed" + (" (gate hooks left)" if hooks else ""),
            )
        )


# -- hypothesis strategy --------------------------------------------------------------------------------
def writes_input(b: Block) -> bool:
    """True if the block may write into its own input in place (``x += f(x)``, ``relu_(x)``).  Kinds
    that fall back to "res" ("again" without a block to repeat, "mha"/"rnn" outside "seq") count as res."""
    inplace_act = (
        b.act in ("relu_inplace", "f_relu_") and b.norm != "pre"
    )  # applied to the input itself
    if b.kind == "shared":
        return b.variant % VARIANTS["shared"] == 1 and inplace_act
    if b.kind == "func":
        return inplace_act
    if b.kind in ("res", "again", "alias", "mha", "rnn") or b.kind not in VARIANTS:
        v = b.variant % VARIANTS["res"]
        return v == 3 or (v == 8 and b.norm != "pre")
    return False


def tame(b: Block) -> Block:
    """``b`` rewritten not to write into its input (the in-place add goes onto the branch output)."""
    if not writes_input(b):
        return b
    if b.kind in ("shared", "func"):
        return replace(b, norm="pre")
    return replace(b, variant=2 if b.variant % VARIANTS["res"] == 3 else 0)


def net_specs(max_blocks: int = 5, max_conv: int = 3, input_writes: bool = True) -> Any:
    """Hypothesis strategy for ``NetSpec``s (small widths: 2..6; at most ``max_blocks`` blocks);
    ``input_writes=False``: no block writes into its own input (see ``writes_input``)."""
    from hypothesis import strategies as st

    def blocks(dom: str, lo: int, hi: int) -> Any:
        block = st.builds(
            Block,
            kind=st.sampled_from(KINDS[dom]),
            width=st.integers(2, 6),
            act=st.sampled_from(ACTS),
            norm=st.sampled_from(NORMS),
            variant=st.integers(0, 13),
            bn=st.booleans(),
        )
        return st.lists(block if input_writes else block.map(tame), min_size=lo, max_size=hi).map(
            tuple
        )

    def with_input(inp: str) -> Any:
        conv = blocks("img", 1, max_conv) if inp == "img" else st.just(())
        return st.builds(
            NetSpec,
            input=st.just(inp),
            dim=st.integers(2, 6),
            conv=conv,
            blocks=blocks(inp, 0 if inp == "img" else 1, max_blocks if inp != "img" else 2),
            container=st.sampled_from(("list", "seq", "attrs")),
            out=st.sampled_from(("tensor", "tuple", "dict")),
            seed=st.integers(0, 2**16),
            call=st.sampled_from(("tensor", "tuple", "dict")),
            batch=st.integers(1, 3),
            double=st.booleans(),
        )

    return st.sampled_from(("vec", "seq", "img")).flatmap(with_input)


# -- minimal repros ---------------------------------------------------------------------------------------
def _simpler(spec: NetSpec) -> Iterator[NetSpec]:
    """Specs one step simpler than ``spec``: a block fewer, then one field of one block plainer."""
    for name in ("blocks", "conv"):
        bs = getattr(spec, name)
        for i in range(len(bs)):
            if name == "blocks" and len(bs) == 1 and spec.input != "img":
                break
            if name == "conv" and len(bs) == 1:
                break
            yield replace(spec, **{name: bs[:i] + bs[i + 1 :]})
    for f, v in (
        ("out", "tensor"),
        ("container", "list"),
        ("call", "tensor"),
        ("double", False),
        ("batch", 3),
        ("dim", 2),
        ("seed", 0),
    ):
        if getattr(spec, f) != v:
            yield replace(spec, **{f: v})
    plain = Block("res")
    for name in ("conv", "blocks"):
        bs = getattr(spec, name)
        for i, b in enumerate(bs):
            for f in ("norm", "act", "bn", "width", "variant"):
                if getattr(b, f) != getattr(plain, f):
                    yield replace(
                        spec,
                        **{name: bs[:i] + (replace(b, **{f: getattr(plain, f)}),) + bs[i + 1 :]},
                    )


def shrink(spec: NetSpec, key: tuple, failing: tuple[str, ...] = (), budget: int = 80) -> NetSpec:
    """Greedily simplify ``spec`` while it still fails with ``key`` (the joint removal is ``failing``
    while those candidates exist, else all candidates at once)."""

    def pick(ids: list[str]) -> list[str]:
        same = [
            i for i in ids if i in failing
        ]  # the failing set while its ids still exist, else all
        return same if len(same) >= 2 else ids

    def fails(s: NetSpec) -> bool:
        return any(f.key == key for f in check_spec(s, pick).failures)

    progress = True
    while progress and budget > 0:
        progress = False
        for s in _simpler(spec):
            budget -= 1
            if fails(s):
                spec, progress = s, True
                break
            if budget <= 0:
                break
    return spec


# -- a run over many specs ----------------------------------------------------------------------------------
def run(
    n: int,
    seed: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    input_writes: bool = True,
) -> list[Outcome]:
    """Check ``n`` hypothesis-drawn specs (``derandomize`` unless ``seed`` is given); the outcomes.
    ``input_writes=False`` leaves out blocks writing into their own input (see ``writes_input``)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    outcomes: list[Outcome] = []

    @settings(
        max_examples=n,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=net_specs(input_writes=input_writes), data=st.data())
    def one(spec: NetSpec, data: Any) -> None:
        def pick(ids: list[str]) -> list[str]:
            return data.draw(
                st.lists(st.sampled_from(ids), min_size=2, unique=True), label="joint removal"
            )

        o = check_spec(spec, pick)
        outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)

    if seed is not None:
        one = hseed(seed)(one)
    one()
    return outcomes


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    """The summary row: examples, traced, candidates, self-check drops, rewrites, equal, and counts."""
    cats = ("crash", "refused", "wrong", "params", "modified", "invalid")
    t = {
        "examples": len(outcomes),
        "traced": sum(o.traced for o in outcomes),
        "candidates": sum(o.candidates for o in outcomes),
        "dropped": sum(o.dropped for o in outcomes),
        "rewrites": sum(o.rewrites for o in outcomes),
        "equal": sum(o.equal for o in outcomes),
    }
    for c in cats:
        t[c] = sum(f.category == c for o in outcomes for f in o.failures)
    return t


def distinct(outcomes: list[Outcome]) -> dict[tuple, tuple[Failure, NetSpec, int]]:
    """Failure key -> (first failure, smallest spec showing it, how many times it was seen)."""
    seen: dict[tuple, tuple[Failure, NetSpec, int]] = {}

    def size(s: NetSpec) -> tuple[int, int]:
        return len(s.conv) + len(s.blocks), len(repr(s))

    for o in outcomes:
        for f in o.failures:
            if f.key not in seen:
                seen[f.key] = (f, o.spec, 1)
            else:
                f0, s0, k = seen[f.key]
                seen[f.key] = (f, o.spec, k + 1) if size(o.spec) < size(s0) else (f0, s0, k + 1)
    return seen
