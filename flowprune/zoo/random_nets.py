"""Random architectures for fuzzing: a small spec (``NetSpec`` of ``Block``s) and a builder.

A net is ``stem -> [conv blocks -> pool] -> blocks -> head``, on 2-D ``[B, D]``, 3-D ``[B, T, D]`` or
image ``[B, C, H, W]`` inputs (passed as a tensor, a tuple or a dict; batch 1-3; float32 or float64).
Block kinds cover the patterns flowprune has to see through: residual adds (written a dozen ways:
in place, reshaped, sliced, subtracted, scaled, behind a keyword call...), parallel branches (Falcon's
``x + f(h) + g(h)``), DenseNet concats (also along tokens/height/batch), width changes and
projections, submodules returning tuples/lists/dicts, modules called twice, one branch module held by
two blocks, tied weights, weights used functionally, gated (GLU / squeeze-excitation) products,
attention and RNN leaves.  Each
``Block`` has a ``variant`` integer read modulo the number of variants of its kind, so that any
drawn spec builds a valid model and a spec's ``repr`` is a complete repro:

>>> from flowprune.zoo.random_nets import Block, NetSpec, build
>>> model, x = build(NetSpec("vec", 4, blocks=(Block("res"), Block("dense", width=3))))

``fuzzing.net_specs()`` is the hypothesis strategy drawing specs; this module needs torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTS = ("relu", "relu_inplace", "f_relu_", "gelu", "f_gelu", "tanh", "silu", "identity")
NORMS = ("none", "pre", "post", "inner")
# kind -> number of variants (Block.variant is taken modulo this)
VARIANTS = {
    "res": 14,
    "parallel": 5,
    "dense": 6,
    "plain": 3,
    "proj": 2,
    "tuple": 7,
    "dict": 5,
    "shared": 4,
    "again": 1,
    "alias": 14,
    "tied": 2,
    "glu": 2,
    "func": 2,
    "mha": 3,
    "rnn": 2,
}
_COMMON = (
    "res",
    "parallel",
    "dense",
    "plain",
    "proj",
    "tuple",
    "dict",
    "shared",
    "again",
    "alias",
    "tied",
    "glu",
    "func",
)
KINDS = {"img": _COMMON, "vec": _COMMON}
KINDS["seq"] = KINDS["vec"] + ("mha", "rnn")


@dataclass(frozen=True)
class Block:
    """One block: ``kind`` (see ``VARIANTS``), a ``width`` (hidden size, or the output size of a
    block that changes it), an activation, where a norm goes, which variant, BatchNorm or not."""

    kind: str
    width: int = 4
    act: str = "relu"
    norm: str = "none"
    variant: int = 0
    bn: bool = False


@dataclass(frozen=True)
class NetSpec:
    """``input``: "vec" ([B, D]), "seq" ([B, T, D]) or "img" ([B, C, H, W]); ``dim``: D or C;
    ``conv``: blocks before the global pool (img only); ``container``: "list", "seq" or "attrs"
    (how blocks are held); ``out``: the model returns a "tensor", a "tuple" or a "dict"; ``call``:
    the example input is a "tensor", a "tuple" ``(x,)`` or a "dict" ``{"x": x, "scale": 0.5}``; ``batch``: its batch
    size; ``double``: float64 weights and inputs."""

    input: str
    dim: int
    conv: tuple[Block, ...] = ()
    blocks: tuple[Block, ...] = ()
    container: str = "list"
    out: str = "tensor"
    seed: int = 0
    call: str = "tensor"
    batch: int = 3
    double: bool = False


# -- pieces ---------------------------------------------------------------------------------------------
class Dom:
    """Domain of a block: which layer, norm and concat dim an "img", "vec" or "seq" block uses."""

    def __init__(self, kind: str):
        self.kind = kind
        self.cat = 1 if kind == "img" else -1

    def lin(self, i: int, o: int, k: int = 1, stride: int = 1) -> nn.Module:
        return nn.Conv2d(i, o, k, stride, k // 2) if self.kind == "img" else nn.Linear(i, o)

    def norm(self, n: int, bn: bool) -> nn.Module:
        if self.kind == "img":
            return nn.BatchNorm2d(n) if bn else nn.GroupNorm(1, n)
        return nn.BatchNorm1d(n) if bn and self.kind == "vec" else nn.LayerNorm(n)


def act_module(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU(),
        "relu_inplace": nn.ReLU(inplace=True),
        "gelu": nn.GELU(),
        "tanh": nn.Tanh(),
        "silu": nn.SiLU(),
    }.get(name, nn.Identity())


def apply_act(name: str, module: nn.Module, h: Tensor) -> Tensor:
    # functional activations run in the parent's forward (traced ops, not a leaf call); f_relu_ in place
    if name == "f_relu_":
        return torch.relu_(h)
    if name == "f_gelu":
        return F.gelu(h)
    return module(h)


class Unit(nn.Module):
    """The body of a branch: lin -> [norm] -> act -> lin [-> norm] (an MLP, or conv3x3-norm-act-conv1x1)."""

    def __init__(
        self, dom: Dom, d_in: int, hidden: int, d_out: int, act: str, inner_norm: bool, bn: bool
    ):
        super().__init__()
        self.fc1 = dom.lin(d_in, hidden, k=3)
        self.n1 = dom.norm(hidden, bn) if dom.kind == "img" else nn.Identity()
        self.act_name, self.act = act, act_module(act)
        self.fc2 = dom.lin(hidden, d_out)
        self.n2 = dom.norm(d_out, bn) if inner_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.n2(self.fc2(apply_act(self.act_name, self.act, self.n1(self.fc1(x)))))


class _Block(nn.Module):
    """Shared plumbing: optional pre-norm (``h``) and post-norm around the block's own computation."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__()
        self.v = b.variant % VARIANTS[b.kind]
        self.pre = dom.norm(d, b.bn) if b.norm == "pre" else None
        self.dom = dom.kind
        self.d_out = d

    def h(self, x: Tensor) -> Tensor:
        return self.pre(x) if self.pre is not None else x

    def unit(self, dom: Dom, d: int, b: Block, d_out: int | None = None) -> Unit:
        return Unit(dom, d, b.width, d if d_out is None else d_out, b.act, b.norm == "inner", b.bn)

    def post_norm(self, dom: Dom, d: int, b: Block) -> None:
        self.post = dom.norm(d, b.bn) if b.norm == "post" else None

    def finish(self, y: Tensor) -> Tensor:
        return self.post(y) if getattr(self, "post", None) is not None else y


class Res(_Block):
    """``x + f(h)`` written as: +, reversed +, ``out += x``, ``x += out`` (mutates the input),
    torch.add, a scalar scale, a layer-scale parameter, relu after the add, in-place pre-activation,
    ``f`` called with a keyword argument, ``f``'s output also used after the add, reshaped, sliced
    (f is one wider), subtracted."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.f = self.unit(dom, d, b, d + 1 if self.v == 12 else d)
        if self.v == 6:
            self.gamma = nn.Parameter(torch.rand(d, 1, 1) if dom.kind == "img" else torch.rand(d))
        self.dim_feat = 1 if dom.kind == "img" else -1
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h, v = self.h(x), self.v
        if v == 8:
            h = torch.relu_(h)  # without a pre-norm this rewrites the block input itself
        if v in (0, 8):
            y = x + self.f(h)
        elif v == 1:
            y = self.f(h) + x
        elif v == 2:
            y = self.f(h)
            y += x
        elif v == 3:
            x += self.f(h)
            y = x
        elif v == 4:
            y = torch.add(x, self.f(h))
        elif v == 5:
            y = x + 0.5 * self.f(h)
        elif v == 6:
            y = x + self.gamma * self.f(h)
        elif v == 7:
            y = F.relu(x + self.f(h), inplace=True)
        elif v == 9:
            y = x + self.f(x=h)
        elif v == 11:
            y = x + self.f(h).flatten(1).view_as(x)
        elif v == 12:
            y = x + (self.f(h)[:, :-1] if self.dom == "img" else self.f(h)[..., :-1])
        elif v == 13:
            y = x - self.f(h)
        else:  # f's output has a second consumer besides the add
            out = self.f(h)
            y = (x + out) * torch.sigmoid(out.mean(self.dim_feat, keepdim=True))
        return self.finish(y)


class Parallel(_Block):
    """Falcon-like parallel branches on one normalised input: ``x + f(h) + g(h)`` in five spellings."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.f, self.g = self.unit(dom, d, b), self.unit(dom, d, b)
        if self.v == 3:
            self.k = self.unit(dom, d, b)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h, v = self.h(x), self.v
        if v == 0:
            y = x + self.f(h) + self.g(h)
        elif v == 1:
            y = x + (self.f(h) + self.g(h))
        elif v == 2:
            out = self.f(h)
            out += self.g(h)
            y = x + out
        elif v == 3:
            y = x + self.f(h) + self.g(h) + self.k(h)
        else:
            y = self.f(h) + self.g(h) + x
        return self.finish(y)


class Dense(_Block):
    """DenseNet-like ``cat([x, f(h)])`` (the width grows): both orders, two new parts, a pre-activated
    single layer, ``torch.concat``; variant 5 concatenates along another dim (tokens, height, batch)."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        w = b.width
        if self.v == 3:
            self.n, self.act_name, self.act = dom.norm(d, b.bn), b.act, act_module(b.act)
            self.f = dom.lin(d, w, k=3)
        else:
            self.f = self.unit(dom, d, b, w)
        if self.v == 2:
            self.g = self.unit(dom, d, b, w)
        if self.v == 5:
            self.f = self.unit(dom, d, b, d)
        self.d_out = d if self.v == 5 else d + w * (2 if self.v == 2 else 1)

    def forward(self, x: Tensor) -> Tensor:
        h, v, dim = self.h(x), self.v, 1 if self.dom == "img" else -1
        if v == 1:
            return torch.cat([self.f(h), x], dim)
        if v == 2:
            return torch.cat([x, self.f(h), self.g(h)], dim)
        if v == 3:
            return torch.cat([x, self.f(apply_act(self.act_name, self.act, self.n(h)))], dim)
        if v == 4:
            return torch.concat((x, self.f(h)), dim=dim)
        if v == 5:  # img: height, seq: tokens, vec: batch
            return torch.cat(
                [x, self.f(h)], 2 if self.dom == "img" else 1 if self.dom == "seq" else 0
            )
        return torch.cat([x, self.f(h)], dim)


class Plain(_Block):
    """A width change: act(lin(x)) [+ norm]; as an ``nn.Sequential``; stride 2 (img) or norm first."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        w = b.width
        stride = 2 if self.v == 2 and dom.kind == "img" else 1
        self.lin = dom.lin(d, w, k=3, stride=stride)
        self.n = dom.norm(w, b.bn) if b.norm != "none" else nn.Identity()
        self.act_name, self.act = b.act, act_module(b.act)
        if self.v == 1:
            self.seq = nn.Sequential(dom.lin(w, w), act_module(b.act))
        self.d_out = w

    def forward(self, x: Tensor) -> Tensor:
        y = apply_act(self.act_name, self.act, self.n(self.lin(x)))
        return self.seq(y) if self.v == 1 else y


class Proj(_Block):
    """A projection shortcut: ``proj(x) + f(x)`` to a new width (img variant 1: stride 2 in both)."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        w, s = b.width, 2 if self.v == 1 and dom.kind == "img" else 1
        self.proj = dom.lin(d, w, stride=s)
        self.f = Unit(dom, d, w, w, b.act, b.norm == "inner", b.bn)
        if s == 2:
            self.f.fc1 = dom.lin(d, w, k=3, stride=2)
        self.d_out = w

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) + self.f(x)


class TupleSub(nn.Module):
    """Returns ``(out, aux)``, ``(aux, out)``, ``[out, aux]``, ``(out, None, 3)`` or ``(out, argmax)``."""

    def __init__(self, dom: Dom, d: int, b: Block, v: int):
        super().__init__()
        self.v = v
        self.f = Unit(dom, d, b.width, d, b.act, b.norm == "inner", b.bn)
        self.aux = dom.lin(d, d)

    def forward(self, x: Tensor) -> Any:
        out, aux = self.f(x), self.aux(x)
        if self.v == 1:
            return aux, out
        if self.v == 3:
            return [out, aux]
        if self.v == 4:
            return out, None, 3
        if self.v == 6:  # an integer side output
            return out, aux.argmax(1 if aux.dim() == 4 else -1)
        return out, aux


class TupleRes(_Block):
    """``x + sub(h)[i]`` with the submodule returning a tuple or list; variant 2 adds the aux output too,
    variant 5 multiplies the sum by ``sigmoid(aux)``."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.sub = TupleSub(dom, d, b, self.v)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        t, v = self.sub(self.h(x)), self.v
        if v == 1:
            y = x + t[1]
        elif v == 2:
            out, aux = t
            y = x + out + aux
        elif v == 5:
            out, aux = t
            y = (x + out) * torch.sigmoid(aux)
        else:
            y = x + t[0]
        return self.finish(y)


class DictSub(nn.Module):
    """Returns ``{"h": out, "aux": aux}`` (or reordered, or ``{"h": out}``, or ``{"h": (out, aux)}``)."""

    def __init__(self, dom: Dom, d: int, b: Block, v: int):
        super().__init__()
        self.v = v
        self.f = Unit(dom, d, b.width, d, b.act, b.norm == "inner", b.bn)
        self.aux = dom.lin(d, d)

    def forward(self, x: Tensor) -> dict:
        out, aux = self.f(x), self.aux(x)
        if self.v == 1:
            return {"aux": aux, "h": out}
        if self.v == 3:
            return {"h": out}
        if self.v == 4:
            return {"h": (out, aux)}
        return {"h": out, "aux": aux}


class DictRes(_Block):
    """``x + sub(h)["h"]``; variant 2 adds ``["aux"]`` too, variant 3 rescales the dict entry in place
    of the caller (``o["h"] = o["h"] * 2``)."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.sub = DictSub(dom, d, b, self.v)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        o, v = self.sub(self.h(x)), self.v
        if v == 2:
            y = x + o["h"] + o["aux"]
        elif v == 3:
            o["h"] = o["h"] * 2
            y = x + o["h"]
        elif v == 4:
            y = x + o["h"][0]
        else:
            y = x + o["h"]
        return self.finish(y)


class Shared(_Block):
    """One module called twice: ``f`` on two residual steps, an activation module applied twice, one
    square layer applied twice in a chain, or ``x + f(h) + f(h)``."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.f = self.unit(dom, d, b)
        if self.v in (1, 2):
            self.fc, self.act_name, self.act = dom.lin(d, d), b.act, act_module(b.act)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h, v = self.h(x), self.v
        if v == 0:
            y = x + self.f(h)
            y = y + self.f(y)
        elif v == 1:
            y = x + self.fc(
                apply_act(self.act_name, self.act, self.f(apply_act(self.act_name, self.act, h)))
            )
        elif v == 2:
            y = x + self.fc(apply_act(self.act_name, self.act, self.fc(h)))
        else:
            y = x + self.f(h) + self.f(h)
        return self.finish(y)


class Tied(_Block):
    """``x + b(act(a(h)))`` with ``b.weight`` tied to ``a.weight`` (variant 1: ``a.weight`` tied to a
    same-shaped layer of an earlier block too, when there is one)."""

    def __init__(self, dom: Dom, d: int, b: Block, pool: dict):
        super().__init__(dom, d, b)
        self.a, self.b = dom.lin(d, d), dom.lin(d, d)
        key = tuple(self.a.weight.shape)
        if self.v == 1 and key in pool:
            self.a.weight = pool[key]
        self.b.weight = self.a.weight
        pool.setdefault(key, self.a.weight)
        self.act_name, self.act = b.act, act_module(b.act)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(x + self.b(apply_act(self.act_name, self.act, self.a(self.h(x)))))


class Glu(_Block):
    """A product of two activations: ``x + down(act(gate(h)) * up(h))`` (SwiGLU), or variant 1 a
    squeeze-excitation ``x + f(h) * sigmoid(se(s))``, s = mean(h) over H, W (a broadcast: not a
    merge) or tanh(h)."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        if self.v == 1:
            self.f, self.se = self.unit(dom, d, b), dom.lin(d, d)
        else:
            self.gate, self.up, self.down = (
                dom.lin(d, b.width),
                dom.lin(d, b.width),
                dom.lin(b.width, d),
            )
            self.act_name, self.act = b.act, act_module(b.act)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h = self.h(x)
        if self.v == 1:
            # img: per-channel means broadcast over H, W; vec/seq: an element-wise gate of the same shape
            s = h.mean((2, 3), keepdim=True) if self.dom == "img" else torch.tanh(h)
            return self.finish(x + self.f(h) * torch.sigmoid(self.se(s)))
        return self.finish(
            x + self.down(apply_act(self.act_name, self.act, self.gate(h)) * self.up(h))
        )


class Func(_Block):
    """Weights held by the block itself, used functionally: ``x + linear(act(h), w, b)`` (a 1x1
    ``conv2d`` on images); variant 1 without the skip (a plain same-width layer)."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.w = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.b = nn.Parameter(torch.randn(d) * 0.1)
        self.act_name, self.act = b.act, act_module(b.act)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h = apply_act(self.act_name, self.act, self.h(x))
        y = (
            F.conv2d(h, self.w[:, :, None, None], self.b)
            if self.dom == "img"
            else F.linear(h, self.w, self.b)
        )
        return self.finish(y if self.v == 1 else x + y)


class Mha(_Block):
    """``x + attn(h, h, h)[0]`` with ``nn.MultiheadAttention`` (a leaf returning a tuple), [B, T, D]."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.attn = nn.MultiheadAttention(
            d, 2 if self.v == 2 and d % 2 == 0 else 1, batch_first=True
        )
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        h = self.h(x)
        out, _ = self.attn(h, h, h, need_weights=self.v == 1)
        return self.finish(x + out)


class Rnn(_Block):
    """``x + rnn(h)[0]``: a GRU, or an LSTM whose output is ``(out, (h, c))``, [B, T, D]."""

    def __init__(self, dom: Dom, d: int, b: Block):
        super().__init__(dom, d, b)
        self.rnn = (nn.LSTM if self.v == 1 else nn.GRU)(d, d, batch_first=True)
        self.post_norm(dom, d, b)

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(x + self.rnn(self.h(x))[0])


CLASSES = {
    "res": Res,
    "parallel": Parallel,
    "dense": Dense,
    "plain": Plain,
    "proj": Proj,
    "tuple": TupleRes,
    "dict": DictRes,
    "shared": Shared,
    "glu": Glu,
    "func": Func,
    "mha": Mha,
    "rnn": Rnn,
}


# -- the net -----------------------------------------------------------------------------------------------
class RandomNet(nn.Module):
    """stem -> conv blocks -> global pool -> blocks -> head, built from a ``NetSpec``.

    ``block_kinds`` maps each block's module path to its spec kind (the fuzzer groups results by it)."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec_out = spec.out
        img = spec.input == "img"
        self.stem = Dom("img" if img else "vec").lin(spec.dim, spec.dim, k=3)
        self.block_kinds: dict[str, str] = {}
        pool: dict = {}
        d = spec.dim
        convs, d = self._blocks(Dom("img"), spec.conv if img else (), d, pool)
        blocks, d = self._blocks(Dom(spec.input if not img else "vec"), spec.blocks, d, pool)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if img else None
        self._names: dict[str, list[str]] = {}
        for name, mods in (("features", convs), ("blocks", blocks)):
            self._hold(name, mods, spec.container)
        self.head = nn.Linear(d, 3)

    def _blocks(
        self, dom: Dom, specs: tuple[Block, ...], d: int, pool: dict
    ) -> tuple[list[nn.Module], int]:
        mods: list[nn.Module] = []
        for b in specs:
            kind = b.kind if b.kind in KINDS[dom.kind] else "res"
            if kind == "again":  # call the previous block again when it keeps the width
                if (
                    mods
                    and getattr(mods[-1], "d_out", None) == d
                    and getattr(mods[-1], "d_in", None) == d
                ):
                    mods.append(mods[-1])
                    continue
                kind = "res"
            if (
                kind == "alias"
            ):  # a Res whose branch module is an earlier block's (held by two parents)
                prev = next(
                    (
                        m.f
                        for m in reversed(mods)
                        if isinstance(m, (Res, Parallel, Shared))
                        and m.d_in == d
                        and not (isinstance(m, Res) and m.v == 12)
                    ),
                    None,
                )  # v12's f is one wider
                v12 = b.variant % VARIANTS["res"] == 12  # would slice the borrowed d -> d branch
                m = Res(
                    dom,
                    d,
                    replace(b, kind="res", variant=0 if v12 and prev is not None else b.variant),
                )
                if prev is not None:
                    m.f = prev
                m.d_in, m.kind = d, kind
                mods.append(m)
                continue
            b = replace(b, kind=kind)
            m = Tied(dom, d, b, pool) if kind == "tied" else CLASSES[kind](dom, d, b)
            m.d_in, m.kind = d, kind
            d = m.d_out
            mods.append(m)
        return mods, d

    def _hold(self, name: str, mods: list[nn.Module], container: str) -> None:
        if container == "seq":
            setattr(self, name, nn.Sequential(*mods))
            self._names[name] = [name]
            paths = [f"{name}.{i}" for i in range(len(mods))]
        elif container == "attrs":
            paths = [f"{name}_{i}" for i in range(len(mods))]
            for p, m in zip(paths, mods):
                setattr(self, p, m)
            self._names[name] = paths
        else:
            setattr(self, name, nn.ModuleList(mods))
            self._names[name] = [name]
            paths = [f"{name}.{i}" for i in range(len(mods))]
        seen: set[int] = set()
        for p, m in zip(paths, mods):
            if id(m) not in seen:  # a block held twice is named by its first path
                self.block_kinds[p] = m.kind
                seen.add(id(m))

    def _run(self, name: str, x: Tensor) -> Tensor:
        for attr in self._names[name]:
            held = getattr(self, attr)
            if isinstance(held, nn.ModuleList):
                for m in held:
                    x = m(x)
            else:
                x = held(x)
        return x

    def forward(self, x: Tensor, scale: float = 1.0) -> Any:
        x = self._run("features", self.stem(x * scale if scale != 1.0 else x))
        if self.pool is not None:
            x = self.pool(x)
        x = self._run("blocks", x)
        y = self.head(x)
        if self.spec_out == "tuple":
            return y, x
        if self.spec_out == "dict":
            return {"logits": y, "h": x}
        return y


def example_inputs(spec: NetSpec, extra: int = 0) -> Any:
    """The spec's input as ``spec.call`` says (``extra`` > 0: a bigger batch, longer sequences for "seq")."""
    gen = torch.Generator().manual_seed(spec.seed + 1 + extra)
    b = spec.batch + extra
    shape = {"vec": (b, spec.dim), "seq": (b, 4 + extra, spec.dim), "img": (b, spec.dim, 5, 5)}[
        spec.input
    ]
    x = torch.randn(shape, generator=gen, dtype=torch.float64 if spec.double else torch.float32)
    return {"tensor": x, "tuple": (x,), "dict": {"x": x, "scale": 0.5}}[spec.call]


def build(spec: NetSpec) -> tuple[RandomNet, Any]:
    """A fresh model in eval mode (norms with non-trivial statistics) and its example input."""
    torch.manual_seed(spec.seed)
    model = RandomNet(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    if spec.double:
        model.double()
    return model.eval(), example_inputs(spec)
