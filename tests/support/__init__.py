"""Tiny models whose graphs and candidates are known by hand."""

import torch
from torch import nn


class Residual(nn.Module):
    """y = x + fc(x)."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(x)


class InplaceResidual(nn.Module):
    """The Llama traps: ``.to`` with the same dtype and ``contiguous`` return their input; ``+=`` mutates."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        x = x.to(x.dtype).contiguous()
        out = self.fc(x)
        out += x
        return out


class TwoHeads(nn.Module):
    """a(x) + b(x): an add, but neither term is the other's input, so no residual branch."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.a(x) + self.b(x)


class Parallel(nn.Module):
    """x + (f(x) + g(x)), written with an in-place inner add like Falcon's parallel attention."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.f, self.g = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        h = self.norm(x)
        out = self.f(h)
        out += self.g(h)
        return x + out


class Biased(nn.Module):
    """x + (fc(x) + 1): zeroing fc's output does not zero the term, so the self-check must fail."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + (self.fc(x) + 1.0)


class PreNorm(nn.Module):
    """x + mlp(norm(x)) with the norm outside the branch module (Llama-style): removing mlp kills norm."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Stack(nn.Module):
    """Embedding-free stack of PreNorm blocks in a ModuleList with a shared (tied) head and input."""

    def __init__(self, d: int = 4, n: int = 3):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(PreNorm(d) for _ in range(n))
        self.head = nn.Linear(d, d)
        self.head.weight = self.inp.weight  # tied

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class Reuse(nn.Module):
    """One ReLU module called twice, and one Dropout (eval: passes its input object through)."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.relu(self.fc2(self.drop(self.relu(self.fc1(x)))))


class Concat(nn.Module):
    """cat([a(x), b(x)]) -> fc."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.fc = nn.Linear(2 * d, d)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=-1))


class Raises(nn.Module):
    """Its inner layer expects 5 features."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 4))

    def forward(self, x):
        return self.inner(x)


class MutatingBlock(nn.Module):
    """``x += fc(relu_(x))``: mutates its input (a replayed recording) in place, twice."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        h = self.fc(self.norm(x).relu_())
        x += h
        return x


class MutatingStack(nn.Module):
    """Three MutatingBlocks after an input layer: every block writes into the previous block's output."""

    def __init__(self, d: int = 4, n: int = 3):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.Sequential(*[MutatingBlock(d) for _ in range(n)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


class DenseCat(nn.Module):
    """head(cat([x, fc(x)])): DenseNet's pattern; fc's output is a removable concat input."""

    def __init__(self, d: int = 4, growth: int = 3):
        super().__init__()
        self.fc = nn.Linear(d, growth)
        self.head = nn.Linear(d + growth, 2)

    def forward(self, x):
        return self.head(torch.cat([x, self.fc(x)], dim=-1))


class DenseCat1d(nn.Module):
    """head(cat([x, conv(x)], channels)) on [B, C, L] sequences: the concat is within samples, across
    what a token-wise view would call rows."""

    def __init__(self, c: int = 4, growth: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(c, growth, 3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.cat([x, self.conv(x)], dim=1))


class DictEncoder(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return {"h": self.fc(x)}


class ReplacesInOutput(nn.Module):
    """The caller replaces an element of a module's dict output (no tensor changes in place)."""

    def __init__(self, d: int = 4, n: int = 2):
        super().__init__()
        self.enc = DictEncoder(d)
        self.blocks = nn.ModuleList(PreNorm(d) for _ in range(n))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        o = self.enc(x)
        o["h"] = o["h"] * 2 + 1
        h = o["h"]
        for b in self.blocks:
            h = b(h)
        return self.head(h)
