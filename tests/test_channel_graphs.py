"""Channel groups on hypothesis-built random channel graphs: chains of conv/linear layers with residual
adds, cat + split/chunk, reshapes to heads and back (softmax per head, attention with GQA), grouped
convolutions (groups 1, 2 or C), BatchNorm, LayerNorm, ReLU.  For every drawn graph no group fails the
built-in check, and removing random units of every prunable group gives a sliced model equal to the
masked one (at two input sizes) with a parameter drop equal to ``savings``.

A drawn ``spec`` (domain, ops) is a complete repro: ``GraphNet(domain, ops)``."""

from __future__ import annotations

import copy
import random
import warnings

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from torch import nn

from flowprune.channels import UnitGates, channel_groups, slice_, slices_for

TOL = 1e-5


# -- the random graphs ----------------------------------------------------------------------------------
class GraphNet(nn.Module):
    """``domain`` "img" ([B, 3, H, W], convolutions) or "seq" ([B, T, 4], linear layers); ``ops`` a
    tuple of tuples (name, *ints) applied in order to a running tensor of C channels, then mean pooling
    and a linear head to 3 outputs."""

    def __init__(self, domain: str, ops: tuple):
        super().__init__()
        self.domain, self.ops = domain, ops
        self.layers = nn.ModuleList()
        self.head_dims = []  # per op: the head size of "heads" (views take -1 heads, as real models do)
        img = domain == "img"
        C = 3 if img else 4

        def lin(i, o, groups=1, k=1):
            if img:
                return nn.Conv2d(i, o, k, padding=k // 2, groups=groups)
            return nn.Linear(i, o)

        for op in ops:
            name, args = op[0], op[1:]
            mods = nn.ModuleDict()
            if name == "lin":  # (out, kernel, groups: 0 -> 1, 1 -> 2, 2 -> C)
                out, k, gk = args
                g = (1, 2, C)[gk]
                mods["f"] = lin(C, out, g, k)
                C = out
            elif name == "norm":
                mods["f"] = nn.BatchNorm2d(C) if img else nn.LayerNorm(C)
            elif name == "res":  # x + f2(relu(f1(x)))  (hidden, groups of f1)
                hidden, gk = args
                g = (1, 2, C)[gk]
                mods["f1"] = lin(C, hidden, g, 3)
                mods["f2"] = lin(hidden, C)
            elif name == "cat":  # cat([a(x), b(x)])
                c1, c2 = args
                mods["a"], mods["b"] = lin(C, c1), lin(C, c2)
                C = c1 + c2
            elif name == "split":  # p, q = split(x, [s, C - s]); cat([q, f(p)])
                s, out = args
                mods["f"] = lin(s, out)
                C = C - s + out
            elif name == "chunk":  # p, q = chunk(x, 2); p * sigmoid(q)
                C //= 2
            elif (
                name == "flip"
            ):  # channels reversed (a constant permutation x[:, perm] cannot be sliced)
                pass
            elif name == "repeat":  # x.repeat along channels: each channel twice
                C *= 2
            elif name == "scale":  # a per-channel parameter (layer scale)
                mods["f"] = _Scale(C)
            elif name == "twice":  # one layer applied twice: f(relu(f(x)))
                mods["f"] = lin(C, C)
            elif name == "tcat":  # cat([x, f(x)]) along positions (tokens / height)
                mods["f"] = lin(C, C)
            elif (
                name == "gnorm"
            ):  # GroupNorm(1) on images (see test_group_norm_groups), RMSNorm on sequences
                mods["f"] = nn.GroupNorm(1, C) if img else nn.RMSNorm(C)
            elif name == "prelu":
                mods["f"] = nn.PReLU(C if img else 1)  # PReLU's channel dim is dim 1
            elif name == "inplace":  # x += f(x); relu_
                mods["f"] = lin(C, C)
            elif name == "center":  # x - mean over channels: joins every channel
                pass
            elif name == "up":  # transposed convolution (images), a linear layer (sequences)
                (out,) = args
                mods["f"] = nn.ConvTranspose2d(C, out, 2, stride=2) if img else nn.Linear(C, out)
                C = out
            elif name == "glu":  # F.glu over the channels
                C //= 2
            elif name == "se":  # squeeze-excitation: x * sigmoid(f2(relu(f1(mean(x)))))
                mods["f1"], mods["f2"] = nn.Linear(C, args[0]), nn.Linear(args[0], C)
            elif name == "matw":  # weights used functionally: x @ W + b, or x @ W2.t()
                (out,) = args
                mods["f"] = _Functional(C, out)
                C = out
            elif name == "pairsum":  # adjacent channel pairs summed: view(.., -1, 2).sum
                C //= 2
            elif (
                name == "fused"
            ):  # residual attention with a fused qkv (chunk 3), h heads of d, v of dv
                h, d, dv = args
                mods["qkv"] = lin(C, h * (2 * d + dv))
                mods["o"] = lin(h * dv, C)
            elif name == "attn":  # residual attention, h query heads of d, kv heads h // rep
                h, rep, d = args
                kv = h // rep
                mods["q"], mods["k"], mods["v"] = lin(C, h * d), lin(C, kv * d), lin(C, kv * d)
                mods["o"] = lin(h * d, C)
            self.head_dims.append(C // op[1] if name == "heads" else 0)
            self.layers.append(mods)
        self.head = nn.Linear(C, 3)
        self._init()

    @torch.no_grad()
    def _init(self):
        gen = torch.Generator().manual_seed(len(self.ops))
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, fan_in**-0.5, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)

    def forward(self, x):
        img = self.domain == "img"
        cdim = 1 if img else -1
        for op, mods, hd in zip(self.ops, self.layers, self.head_dims):
            name, args = op[0], op[1:]
            if name == "lin":
                x = mods["f"](x)
            elif name == "norm":
                x = mods["f"](x)
            elif name == "relu":
                x = torch.relu(x)
            elif name == "res":
                x = x + mods["f2"](torch.relu(mods["f1"](x)))
            elif name == "cat":
                x = torch.cat([mods["a"](x), mods["b"](x)], cdim)
            elif name == "split":
                s = mods["f"].weight.shape[1]  # from the (sliced) layer, not the spec's constant
                p, q = x.split([s, x.shape[cdim] - s], cdim)
                x = torch.cat([q, mods["f"](p)], cdim)
            elif name == "chunk":
                p, q = x.chunk(2, cdim)
                x = p * torch.sigmoid(q)
            elif name == "flip":
                x = x.flip(cdim)
            elif name == "up":
                x = mods["f"](x)
            elif name == "glu":
                x = F.glu(x, cdim)
            elif name == "se":
                pooled = x.mean((2, 3)) if img else x.mean(1, keepdim=True)
                s = torch.sigmoid(mods["f2"](torch.relu(mods["f1"](pooled))))
                x = x * (s[:, :, None, None] if img else s)
            elif name == "matw":
                x = mods["f"](x, img)
            elif name == "pairsum":
                if img:
                    B, C, H, W = x.shape
                    x = x.view(B, -1, 2, H, W).sum(2)
                else:
                    x = x.unflatten(-1, (-1, 2)).sum(-1)
            elif name == "repeat":
                x = x.repeat(1, 2, 1, 1) if img else x.repeat(1, 1, 2)
            elif name == "scale":
                x = mods["f"](x, cdim)
            elif name == "twice":
                x = mods["f"](torch.relu(mods["f"](x)))
            elif name == "tcat":
                x = torch.cat([x, mods["f"](x)], 2 if img else 1)
            elif name in ("gnorm", "prelu"):
                x = mods["f"](x)
            elif name == "inplace":
                x = x.clone()
                x += mods["f"](x)
                x = torch.relu_(x)
            elif name == "center":
                x = x - x.mean(cdim, keepdim=True)
            elif name == "fused":
                h, d, dv = args
                x = x + self._fused(mods, x, d, dv, img)
            elif name == "heads":  # softmax over each head's channels, then back
                if img:
                    B, C, H, W = x.shape
                    x = x.view(B, -1, hd, H, W).softmax(2).reshape(B, C, H, W)
                else:
                    B, T, C = x.shape
                    x = x.view(B, T, -1, hd).transpose(1, 2).softmax(-1)
                    x = x.transpose(1, 2).reshape(B, T, C)
            elif name == "attn":
                h, rep, d = args
                x = x + self._attention(mods, x, h, rep, d, img)
        x = x.mean((2, 3)) if img else x.mean(1)
        return self.head(x)

    @staticmethod
    def _fused(mods, x, d, dv, img):
        qkv = mods["qkv"](x)
        if img:
            B, _, H, W = x.shape
            qkv = qkv.flatten(2).transpose(1, 2)
        B, T, _ = qkv.shape
        qkv = qkv.view(B, T, -1, 2 * d + dv).transpose(1, 2)  # per head [q | k | v]
        q, k, v = qkv.split([d, d, dv], -1)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)
        if img:
            o = o.transpose(1, 2).reshape(B, -1, H, W)
        return mods["o"](o)

    @staticmethod
    def _attention(mods, x, h, rep, d, img):
        if img:  # positions are the pixels
            B, C, H, W = x.shape
            tok = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  [B, HW, c]
            q, k, v = tok(mods["q"](x)), tok(mods["k"](x)), tok(mods["v"](x))
        else:
            q, k, v = mods["q"](x), mods["k"](x), mods["v"](x)
        B, T, _ = q.shape
        q = q.view(B, T, -1, d).transpose(1, 2)  # -1 heads: slicing heads changes their count
        k = k.view(B, T, -1, d).transpose(1, 2)
        v = v.view(B, T, -1, d).transpose(1, 2)
        if rep > 1:  # Hugging Face's repeat_kv
            kvh = k.shape[1]
            k = k[:, :, None].expand(B, kvh, rep, T, d).reshape(B, kvh * rep, T, d)
            v = v[:, :, None].expand(B, kvh, rep, T, d).reshape(B, kvh * rep, T, d)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)
        if img:
            o = o.transpose(1, 2).reshape(B, -1, H, W)
        return mods["o"](o)


class _Scale(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(C))

    def forward(self, x, cdim):
        shape = [1] * x.dim()
        shape[cdim] = -1
        return x * self.gamma.view(shape)


class _Functional(nn.Module):
    def __init__(self, C, out):
        super().__init__()
        self.w = nn.Parameter(torch.randn(C, out) * C**-0.5)  # used as x @ w + b
        self.b = nn.Parameter(torch.randn(out) * 0.3)
        self.w2 = nn.Parameter(torch.randn(out, out) * out**-0.5)  # used as x @ w2.t()

    def forward(self, x, img):
        if img:
            x = x.permute(0, 2, 3, 1)
        x = torch.relu(torch.matmul(x, self.w) + self.b)
        x = x @ self.w2.t()
        return x.permute(0, 3, 1, 2) if img else x


@st.composite
def graph_specs(draw):
    domain = draw(st.sampled_from(["img", "seq"]))
    C = 3 if domain == "img" else 4
    # a stem first: the model input is untracked (see test_residual_on_the_model_input)
    stem = draw(st.integers(2, 6))
    ops = [("lin", stem, 1, 0)]
    C = stem
    for _ in range(draw(st.integers(1, 5))):
        kinds = [
            "lin",
            "norm",
            "relu",
            "res",
            "cat",
            "heads",
            "attn",
            "flip",
            "scale",
            "twice",
            "tcat",
        ]
        kinds += ["prelu", "inplace", "center", "fused", "up", "se", "matw"]
        kinds += (["repeat"] if C <= 4 else []) + (["glu", "pairsum"] if C % 2 == 0 else [])
        kinds.append("gnorm")
        if C >= 2:
            kinds.append("split")
        if C % 2 == 0:
            kinds.append("chunk")
        kind = draw(st.sampled_from(kinds))
        if kind == "lin":
            gk = draw(st.sampled_from([0, 1, 2])) if domain == "img" else 0
            if gk == 1 and C % 2:
                gk = 0
            out = C if gk == 2 and draw(st.booleans()) else draw(st.integers(2, 8))
            if gk == 1:
                out += out % 2
            if gk == 2:
                out = C * draw(st.sampled_from([1, 2])) if out != C else C
            k = draw(st.sampled_from([1, 3])) if domain == "img" else 1
            ops.append(("lin", out, k, gk))
            C = out
        elif kind == "norm":
            ops.append(("norm",))
        elif kind == "relu":
            ops.append(("relu",))
        elif kind == "res":
            gk = draw(st.sampled_from([0, 1, 2])) if domain == "img" else 0
            if gk == 1 and C % 2:
                gk = 0
            hidden = draw(st.integers(2, 6))
            if gk == 1:
                hidden += hidden % 2
            if gk == 2:
                hidden = C
            ops.append(("res", hidden, gk))
        elif kind == "cat":
            c1, c2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            ops.append(("cat", c1, c2))
            C = c1 + c2
        elif kind == "split":
            s = draw(st.integers(1, C - 1))
            out = draw(st.integers(1, 4))
            ops.append(("split", s, out))
            C = C - s + out
        elif kind == "chunk":
            ops.append(("chunk",))
            C //= 2
        elif kind == "heads":
            divs = [h for h in range(2, C + 1) if C % h == 0 and h < C] or [1]
            ops.append(("heads", draw(st.sampled_from(divs))))
        elif kind == "repeat":
            ops.append(("repeat",))
            C *= 2
        elif kind in ("up", "matw"):
            ops.append((kind, draw(st.integers(2, 6))))
            C = ops[-1][1]
        elif kind == "se":
            ops.append(("se", draw(st.integers(1, 3))))
        elif kind in ("glu", "pairsum"):
            ops.append((kind,))
            C //= 2
        elif kind in ("flip", "scale", "twice", "tcat", "gnorm", "prelu", "inplace", "center"):
            ops.append((kind,))
        elif kind == "fused":
            h = draw(st.sampled_from([1, 2, 3]))
            ops.append(("fused", h, draw(st.integers(1, 3)), draw(st.integers(1, 3))))
        elif kind == "attn":
            h = draw(st.sampled_from([2, 4]))
            rep = draw(st.sampled_from([1, 2]))
            ops.append(("attn", h, rep, draw(st.sampled_from([1, 2, 3]))))
    return domain, tuple(ops)


def inputs(domain: str, other: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1 + other)
    if domain == "img":
        return torch.randn(
            3 if other else 2, 3, 7 if other else 5, 6 if other else 5, generator=gen
        )
    return torch.randn(3 if other else 2, 9 if other else 6, 4, generator=gen)


# -- the check ----------------------------------------------------------------------------------------
def _outputs(model, x):
    with torch.no_grad():
        return model(x).double()


def _n(model):
    return sum(p.numel() for p in model.parameters())


def check_spec(domain: str, ops: tuple, seeds=(0, 1)) -> None:
    torch.manual_seed(0)
    model = GraphNet(domain, ops).eval()
    x, x2 = inputs(domain), inputs(domain, True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = channel_groups(model, x)
    assert gs.failed == {}, f"groups failed the built-in check: {gs.failed}"
    groups = gs.prunable()
    for seed in seeds:
        rng = random.Random(seed)
        removed = {
            g.id: sorted(rng.sample(range(g.units), rng.randint(1, g.units - 1))) for g in groups
        }
        sliced = slice_(copy.deepcopy(model), *slices_for(model, groups, removed))
        for inp in (x, x2):
            with UnitGates(model, groups) as gates:
                gates.set(removed, 0.0)
                masked = _outputs(model, inp)
            got = _outputs(sliced, inp)
            scale = max(masked.abs().max().item(), 1e-6)
            err = (masked - got).abs().max().item()
            assert err <= TOL * scale, (
                f"sliced differs from masked by {err:.3g} (scale {scale:.3g}); {removed}"
            )
        assert _n(model) - _n(sliced) == gs.savings(removed)[0], removed
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
@given(spec=graph_specs())
# grouped convolutions: groups 2, C (depthwise) and a depthwise multiplier of 2, in and out of residuals
@example(spec=("img", (("lin", 4, 1, 0), ("lin", 6, 3, 1), ("norm",), ("relu",), ("lin", 6, 3, 2),
                       ("res", 6, 2), ("lin", 4, 1, 1), ("norm",))))  # fmt: skip
@example(spec=("img", (("lin", 4, 1, 0), ("lin", 8, 3, 2), ("res", 4, 1), ("cat", 2, 4), ("lin", 6, 3, 1),
                       ("prelu",), ("res", 6, 1))))  # fmt: skip
@example(spec=("img", (("lin", 6, 1, 0), ("lin", 6, 3, 2), ("relu",), ("lin", 4, 1, 0), ("res", 4, 2),
                       ("lin", 6, 3, 1), ("lin", 3, 1, 0))))  # fmt: skip
# attention: GQA and plain, heads reshaped and back, fused qkv with another value width
@example(spec=("seq", (("lin", 6, 1, 0), ("attn", 4, 2, 2), ("norm",), ("attn", 2, 1, 3), ("heads", 3),
                       ("lin", 4, 1, 0))))  # fmt: skip
@example(
    spec=("img", (("lin", 4, 1, 0), ("attn", 4, 2, 1), ("split", 1, 1), ("chunk",), ("se", 2)))
)
@example(spec=("seq", (("lin", 4, 1, 0), ("fused", 2, 2, 3), ("repeat",), ("pairsum",), ("glu",),
                       ("matw", 3))))  # fmt: skip
def test_random_channel_graphs(spec):
    check_spec(*spec)


# -- failures found here, as minimal repros ---------------------------------------------------------------
def _check_model(model, x):
    """No group fails the built-in check; every prunable group's removal: sliced == masked, drop == savings."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = channel_groups(model, x)
    assert gs.failed == {}
    groups = gs.prunable()
    rng = random.Random(0)
    removed = {
        g.id: sorted(rng.sample(range(g.units), rng.randint(1, g.units - 1))) for g in groups
    }
    sliced = slice_(copy.deepcopy(model), *slices_for(model, groups, removed))
    with UnitGates(model, groups) as gates:
        gates.set(removed, 0.0)
        masked = _outputs(model, x)
    assert (masked - _outputs(sliced, x)).abs().max() <= TOL * masked.abs().max()
    assert _n(model) - _n(sliced) == gs.savings(removed)[0]
    return gs


class _InputResidual(nn.Module):
    """x + f2(relu(f1(x))) on the model input itself (no stem)."""

    def __init__(self):
        super().__init__()
        self.f1, self.f2, self.head = (
            nn.Conv2d(3, 2, 3, padding=1),
            nn.Conv2d(2, 3, 1),
            nn.Linear(3, 3),
        )

    def forward(self, x):
        x = x + self.f2(torch.relu(self.f1(x)))
        return self.head(x.mean((2, 3)))


def test_residual_on_the_model_input():
    torch.manual_seed(0)
    _check_model(_InputResidual(), torch.randn(2, 3, 5, 5))


def test_group_norm_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1), nn.Flatten(1))
    gs = _check_model(model, torch.randn(2, 3, 5, 5))
    assert [(g.id, g.units) for g in gs.prunable()] == [("0:channels", 2)]


def test_group_norm_after_conv_traces():
    # found here, fixed (rules.group_norm used .view on expanded, non-contiguous labels: channel_groups
    # raised on any conv -> GroupNorm)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(1, 4), nn.Conv2d(4, 2, 1), nn.Flatten(1))
    gs = channel_groups(model.eval(), torch.randn(2, 3, 5, 5))
    assert gs["0:channels"].units == 1 and not gs["0:channels"].prunable


class _Token(nn.Module):
    """A learned token concatenated before the patches (ViT's class token), then ReLU and a Linear."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        return self.fc(torch.relu(x)).mean(1)


def test_learned_token_is_sliced_with_its_channels():
    torch.manual_seed(0)
    gs = _check_model(_Token(), torch.randn(2, 3, 8, 8))
    (g,) = gs.prunable()
    assert ("cls", 2) in [(m.param, m.dim) for m in g.members]
