"""Random residual/dense/plain/parallel/tuple stacks (hypothesis): candidates known by construction,
rewrite == gates.  (``tests/test_fuzz.py`` fuzzes many more patterns, without known counts.)"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import flowprune


class Res(nn.Module):
    def __init__(self, d: int, act: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Plain(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class Dense(nn.Module):
    """cat([x, fc(x)]): the width grows by ``growth``; fc's output is a removable concat input."""

    def __init__(self, d: int, growth: int):
        super().__init__()
        self.fc = nn.Linear(d, growth)

    def forward(self, x):
        return torch.cat([x, self.fc(x)], dim=-1)


class Par(nn.Module):
    """Falcon-like ``x + f(h) + g(h)``, h = norm(x): two branches, and the block is a layer."""

    def __init__(self, d: int, act: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.f, self.g = (
            nn.Linear(d, d),
            nn.Sequential(
                nn.Linear(d, 2 * d), nn.GELU() if act else nn.Identity(), nn.Linear(2 * d, d)
            ),
        )

    def forward(self, x):
        h = self.norm(x)
        return x + self.f(h) + self.g(h)


class Pair(nn.Module):
    """Returns ``(out, aux)``."""

    def __init__(self, d: int):
        super().__init__()
        self.fc, self.aux = nn.Linear(d, d), nn.Linear(d, 1)

    def forward(self, x):
        return torch.tanh(self.fc(x)), self.aux(x)


class Tup(nn.Module):
    """``x + pair(x)[0]``: the tuple-returning submodule is the branch (its first output), the block a layer."""

    def __init__(self, d: int):
        super().__init__()
        self.pair = Pair(d)

    def forward(self, x):
        out, _ = self.pair(x)
        return x + out


class Net(nn.Module):
    def __init__(self, spec: list[tuple[str, int, bool]], d0: int):
        super().__init__()
        blocks, d = [], d0
        for kind, width, act in spec:
            if kind == "res":
                blocks.append(Res(d, act))
            elif kind == "par":
                blocks.append(Par(d, act))
            elif kind == "tup":
                blocks.append(Tup(d))
            elif kind == "dense":
                blocks.append(Dense(d, width))
                d += width
            else:
                blocks.append(Plain(d, width))
                d = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


block = st.tuples(
    st.sampled_from(["res", "dense", "plain", "par", "tup"]), st.integers(2, 5), st.booleans()
)


@settings(max_examples=25, deadline=None)
@given(spec=st.lists(block, min_size=1, max_size=5), d0=st.integers(2, 5), data=st.data())
def test_random_stack(spec, d0, data):
    torch.manual_seed(0)
    net = Net(spec, d0).eval()
    x = torch.randn(3, d0)
    g = flowprune.trace(net, x)
    n = {k: sum(kind == k for kind, _, _ in spec) for k in ("res", "dense", "par", "tup")}
    widths, d = [], d0
    for k, w, _ in spec:
        out = {"dense": d + w, "plain": w}.get(k, d)
        widths.append((d, out))
        d = out
    same = sum(k == "plain" and a == b for (k, _, _), (a, b) in zip(spec, widths))
    kinds = [c.kind for c in g.candidates()]
    assert kinds.count("branch") == n["res"] + n["dense"] + 2 * n["par"] + n["tup"]
    assert kinds.count("layer") == n["res"] + n["par"] + n["tup"] + same
    ids = (
        data.draw(st.lists(st.sampled_from([c.id for c in g.candidates()]), unique=True))
        if kinds
        else []
    )
    with flowprune.Gates(g) as gates, gates.removed(ids), torch.no_grad():
        ref = net(x)
    plan = g.plan(ids)
    small = flowprune.apply(net, plan)
    with torch.no_grad():
        assert torch.allclose(small(x), ref, atol=1e-6)
    removed = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in small.parameters())
    assert removed == plan.params_removed
