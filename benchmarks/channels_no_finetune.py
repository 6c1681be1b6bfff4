"""Structured pruning without fine-tuning: flowprune next to Torch-Pruning 1.6.1.

One run, Markdown on stdout (the command line first):

1. *Digits MLP* (scikit-learn ``load_digits``, 64-256-256-10 ReLU MLP trained here with Adam, fixed
   train / calibration / test split): 50 / 75 / 90 % of the units of both hidden layers removed (per
   layer) by L1, L2, Taylor, LAMP and random scores; flowprune with fill zeros / mean / obs, Torch-Pruning
   with ``MagnitudeImportance(p=1|2)``, ``TaylorImportance``, ``LAMPImportance``, ``RandomImportance``
   (it has no compensation).  Test accuracy.
2. *ResNet-20 / -56* (CIFAR layout, 16/32/64 channels, 1x1-conv shortcuts) trained here on the digits
   upscaled to 3x32x32 (``flowprune.data.digits32``): global L2 magnitude to 1.5x / 2x / 2.5x / 3x fewer
   MACs (the global ratio bisected on flowprune, the same ratio given to Torch-Pruning).  Test accuracy
   for flowprune zeros / obs and Torch-Pruning; the full run repeats it on ResNet-56.
3. *The shipped tiny LM* (``flowprune.cli.default_model()``, a 6-layer Llama trained on CPython's docs):
   MLP neurons + attention heads (key/value groups) removed per layer so that about 20 % / 50 % of the
   parameters go; held-out perplexity for L2 magnitude, Wanda-sp and FLAP scores (the latter two computed
   here from activations), each pruned through flowprune's plan with fill zeros / obs / mean.

    python benchmarks/channels_no_finetune.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import shlex
import sys
import time
from typing import Any, Callable, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import flowprune  # noqa: E402
from flowprune.channels import UnitGates, magnitude_scores, select_units  # noqa: E402
from flowprune.channels.groups import ChannelGroup  # noqa: E402
from flowprune.score.units import select_budget, select_obs_greedy, unit_scores  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # pragma: no cover
    sys.exit("needs torch-pruning: pip install torch-pruning==1.6.1 (the 'bench' extra)")

Scores = dict[str, torch.Tensor]
Removed = dict[str, list[int]]


# --------------------------------------------------------------------------- helpers
def table(head: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def log(msg: str) -> None:
    """Progress on stderr (stdout holds the Markdown)."""
    print(f"  ... {msg}", file=sys.stderr, flush=True)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 256) -> float:
    """Top-1 accuracy in % (eval mode)."""
    model.eval()
    hits = sum(
        int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum()) for i in range(0, len(x), bs)
    )
    return 100.0 * hits / len(x)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    bs: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Adam with a cosine schedule, cross-entropy; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = order[i : i + bs]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def lamp(s: torch.Tensor) -> torch.Tensor:
    """LAMP normalisation (Lee et al. 2021), as Torch-Pruning's ``_lamp``: each score divided by the
    sum of the scores not below it."""
    v, idx = s.reshape(-1).sort()
    below = torch.zeros_like(v)
    below[1:] = v.cumsum(0)[:-1]
    out = torch.zeros_like(v)
    out[idx] = v / (s.sum() - below)
    return out.view_as(s)


def random_scores(groups: Iterable[ChannelGroup], seed: int) -> Scores:
    """Seeded uniform scores."""
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.units, generator=gen) for g in groups}


def taylor_scores(
    graph: flowprune.graph.FlowGraph, groups: list[ChannelGroup], batches: list
) -> Scores:
    """|∂L/∂α| per unit (first-order Taylor of removing it), L = cross-entropy with the labels."""
    from flowprune.score.engine import Engine
    from flowprune.score.taylor import gradient_and_hessian

    gates = UnitGates(graph.model, groups)
    eng = Engine(graph, batches, "ce", gates=gates, progress=False)
    with eng:
        g, _ = gradient_and_hessian(eng, hessian="none")
    return {
        gr.id: g[gates.offsets[gr.id] : gates.offsets[gr.id] + gr.units].abs().float()
        for gr in groups
    }


def fp_prune(
    graph: flowprune.graph.FlowGraph, removed: Removed, fill: str, data: list
) -> tuple[nn.Module | None, Any]:
    """(pruned copy, plan), or (None, error message) when flowprune refuses."""
    try:
        plan = graph.plan(units=removed, fill=fill)
        return flowprune.apply(graph.model, plan, data=data if fill != "zeros" else None), plan
    except Exception as e:  # noqa: BLE001 - reported in the table
        return None, f"{type(e).__name__}: {str(e).splitlines()[0]}"


def tp_prune(
    model: nn.Module,
    x: torch.Tensor,
    importance: Any,
    ratio: float,
    ignored: list[str],
    global_pruning: bool = False,
    grad_batches: list | None = None,
) -> nn.Module:
    """Torch-Pruning's ``BasePruner``, one step, on a copy; ``grad_batches`` fill ``.grad`` first
    (Taylor)."""
    small = copy.deepcopy(model)
    mods = dict(small.named_modules())
    if grad_batches:
        small.zero_grad()
        for xb, yb in grad_batches:
            F.cross_entropy(small(xb), yb).backward()
    pruner = tp.pruner.BasePruner(
        small,
        x,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=[mods[n] for n in ignored],
    )
    pruner.step()
    small.zero_grad(set_to_none=True)
    return small.eval()


# --------------------------------------------------------------------------- 1. digits MLP
def digits_split() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Fixed shuffled split of the 1,797 digits: 1,000 train, 297 calibration, 500 test; inputs / 16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, ca, te = order[:1000], order[1000:1297], order[1297:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 0.1
    x = (x - mu) / sd
    return (x[tr], y[tr]), (x[ca], y[ca]), (x[te], y[te])


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


MLP_CRITERIA = ("L1", "L2", "Taylor", "LAMP", "random")


def mlp_scores(
    crit: str, graph: flowprune.graph.FlowGraph, groups: list[ChannelGroup], calib: list
) -> Scores:
    """flowprune-side scores of ``crit``."""
    model = graph.model
    if crit == "L1":
        return magnitude_scores(model, groups, p=1)
    if crit == "L2":
        return magnitude_scores(model, groups, p=2)
    if crit == "LAMP":
        return magnitude_scores(model, groups, p=2, normalizer=lamp)
    if crit == "Taylor":
        return taylor_scores(graph, groups, calib)
    return random_scores(groups, seed=0)


def tp_importance(crit: str) -> Any:
    return {
        "L1": lambda: tp.importance.MagnitudeImportance(p=1),
        "L2": lambda: tp.importance.MagnitudeImportance(p=2),
        "Taylor": lambda: tp.importance.TaylorImportance(),
        "LAMP": lambda: tp.importance.LAMPImportance(p=2),
        "random": lambda: tp.importance.RandomImportance(),
    }[crit]()


def cell(model: nn.Module | None, err: Any, x: torch.Tensor, y: torch.Tensor) -> str:
    return f"{accuracy(model, x, y):.1f}" if model is not None else f"n/a ({err})"


def section_mlp(quick: bool) -> None:
    print("\n## 1. Digits MLP (64-256-256-10), hidden units removed per layer, no fine-tuning\n")
    (xtr, ytr), (xca, yca), (xte, yte) = digits_split()
    epochs = 30 if quick else 60
    model = train(mlp(), xtr, ytr, epochs, 1e-3)
    dense = accuracy(model, xte, yte)
    calib = [(xca[i : i + 100], yca[i : i + 100]) for i in range(0, len(xca), 100)]
    graph = flowprune.trace(model, xca[:8])
    groups = list(graph.channel_groups().prunable())
    ratios = (0.5, 0.75, 0.9)
    rows = []
    for crit in MLP_CRITERIA:
        scores = mlp_scores(crit, graph, groups, calib)
        for r in ratios:
            removed = select_units(groups, scores, r, "layer")
            accs = [cell(*fp_prune(graph, removed, f, calib), xte, yte) for f in FILLS_MLP]
            torch.manual_seed(0)
            small = tp_prune(
                model,
                xca[:8],
                tp_importance(crit),
                r,
                ["4"],
                grad_batches=calib if crit == "Taylor" else None,
            )
            rows.append([crit, f"{r:.0%}", *accs, f"{accuracy(small, xte, yte):.1f}"])
        log(f"MLP {crit}")
    rows += lamp_global_rows(model, graph, groups, calib, ratios, (xte, yte))
    for r in (*ratios, 0.95):  # greedy OBS selection (downdated after each unit), refit with obs
        removed = select_obs_greedy(model, groups, calib, r)
        acc = cell(*fp_prune(graph, removed, "obs", calib), xte, yte)
        rows.append(["greedy OBS", f"{r:.0%}", "", "", acc, ""])
    log("MLP greedy OBS")
    print(
        f"Trained {epochs} epochs (Adam 1e-3, cosine, batch 64) on 1,000 digits; calibration 297 "
        f"(scores, Taylor gradients, obs/mean fits), test 500.  Dense test accuracy "
        f"**{dense:.1f} %**.  Groups: {', '.join(f'{g.id} ({g.units})' for g in groups)}.\n"
    )
    print(
        table(
            ["criterion", "removed", "flowprune zeros", "flowprune mean", "flowprune obs", "TP"],
            rows,
        )
    )
    print(
        "\nTest accuracy (%).  flowprune Taylor = |dL/dα| of a unit gate (cross-entropy on the "
        "calibration set); TP Taylor = TaylorImportance (Σ|w·∂L/∂w| over the group, gradients of the "
        "same calibration loss).  LAMP: L2 scores with LAMP normalisation on both sides (per layer it "
        "ranks exactly as L2; the global rows rank all units together).  Random: "
        "seeded, different generators on the two sides.  Greedy OBS: flowprune's "
        "select_obs_greedy (one unit at a time, consumers' W and H⁻¹ downdated), refit with obs."
    )


FILLS_MLP = ("zeros", "mean", "obs")


def lamp_global_rows(
    model: nn.Module,
    graph: flowprune.graph.FlowGraph,
    groups: list[ChannelGroup],
    calib: list,
    ratios: Iterable[float],
    test: tuple[torch.Tensor, torch.Tensor],
) -> list[list]:
    """LAMP with one global ranking (its intended use: per layer it ranks as plain L2)."""
    scores = magnitude_scores(model, groups, p=2, normalizer=lamp)
    rows = []
    for r in ratios:
        removed = select_units(groups, scores, r, "global")
        accs = [cell(*fp_prune(graph, removed, f, calib), *test) for f in FILLS_MLP]
        small = tp_prune(model, calib[0][0][:8], tp.importance.LAMPImportance(p=2), r, ["4"], True)
        kept = "/".join(str(g.units - len(removed.get(g.id, ()))) for g in groups)
        rows.append(
            [f"LAMP, global (kept {kept})", f"{r:.0%}", *accs, f"{accuracy(small, *test):.1f}"]
        )
    return rows


# --------------------------------------------------------------------------- 2. ResNet-20
class Block(nn.Module):
    """CIFAR basic block with a 1x1-conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of n blocks, 16/32/64 channels."""

    def __init__(self, n: int = 3, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def bisect_ratio(
    groups: Any, scores: Scores, target: float, scope: str, macs: bool, total: int
) -> tuple[float, Removed]:
    """The smallest ratio (to 1e-3) whose removal saves ``target`` of ``total`` (MACs or params)."""

    def saved(r: float) -> tuple[float, Removed]:
        removed = select_units(groups.prunable(), scores, r, scope)
        p, m = groups.savings(removed)
        return (m if macs else p) / total, removed

    lo, hi = 0.0, 0.99
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if saved(mid)[0] >= target else (mid, hi)
    return hi, saved(hi)[1]


def section_resnet(quick: bool, n: int = 3) -> None:
    from flowprune.data.images import digits32

    name = f"ResNet-{6 * n + 2}"
    print(f"\n## 2. {name} (3x32x32 digits), global L2 magnitude, no fine-tuning\n")
    xtr, ytr = digits32("train")
    xte, yte = digits32("test")
    epochs = 3 if quick else 8
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = train(ResNetCifar(n), xtr, ytr, epochs, 3e-3)
    t_train = time.perf_counter() - t0
    dense = accuracy(model, xte, yte)
    log(f"{name} trained in {t_train:.0f} s")
    x1 = xtr[:1]
    calib = [xtr[i : i + 32] for i in range(0, 128, 32)]
    graph = flowprune.trace(model, x1)
    groups = graph.channel_groups()
    scores = magnitude_scores(model, groups.prunable(), p=2)
    macs0, _ = tp.utils.count_ops_and_params(model, x1)
    base_macs = graph.total_flops // 2
    rows = []
    for speed in (1.25, 1.5, 2.0, 2.5, 3.0):
        ratio, removed = bisect_ratio(groups, scores, 1 - 1 / speed, "global", True, base_macs)
        z, plan = fp_prune(graph, removed, "zeros", calib)
        o, _ = fp_prune(graph, removed, "obs", calib)
        small = tp_prune(
            model, x1, tp.importance.MagnitudeImportance(p=2), ratio, ["fc"], global_pruning=True
        )
        mf, _ = tp.utils.count_ops_and_params(z, x1)
        mt, _ = tp.utils.count_ops_and_params(small, x1)
        rows.append(
            [
                f"{speed}x",
                f"{ratio:.4f}",
                f"{macs0 / mf:.2f}x",
                f"{macs0 / mt:.2f}x",
                f"{accuracy(z, xte, yte):.1f}",
                f"{accuracy(o, xte, yte):.1f}" if o is not None else "n/a",
                f"{accuracy(small, xte, yte):.1f}",
            ]
        )
        log(f"{name} {speed}x")
    print(
        f"Trained {epochs} epochs (Adam 3e-3, cosine, batch 64, no augmentation) on "
        f"{len(xtr)} images ({t_train:.0f} s); dense test accuracy **{dense:.1f} %** on "
        f"{len(xte)}; {macs0 / 1e6:.2f} M MACs (TP's counter).  obs fitted on 128 training images.\n"
    )
    print(
        table(
            [
                "target",
                "global ratio",
                "flowprune speed-up",
                "TP speed-up",
                "flowprune zeros",
                "flowprune obs",
                "TP",
            ],
            rows,
        )
    )
    print(
        "\nTest accuracy (%).  The ratio is bisected on flowprune's own MAC count (groups.savings); "
        "speed-ups measured by TP's counter on both pruned models."
    )


# --------------------------------------------------------------------------- 3. tiny LM
def consumer_inputs(model: nn.Module, groups: list[ChannelGroup], batches: list) -> dict:
    """Per consumer linear (by weight name): Σx, Σx², count over every calibration token (float64)."""
    stats: dict[str, list] = {}
    hooks = []
    for g in groups:
        for m in g.members:
            if m.role != "consumer" or m.param in stats:
                continue
            mod = model.get_submodule(m.param.rsplit(".", 1)[0])
            stats[m.param] = [0.0, 0.0, 0]

            def pre(_mod, args, name=m.param):
                x = args[0].detach().double().reshape(-1, args[0].shape[-1])
                s = stats[name]
                s[0], s[1], s[2] = s[0] + x.sum(0), s[1] + (x * x).sum(0), s[2] + len(x)

            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return stats


def column_scores(
    model: nn.Module, groups: list[ChannelGroup], stats: dict, per_column: Callable
) -> Scores:
    """Unit score = Σ over the unit's consumer columns j of ``per_column(W, Σx, Σx², n)[j]``."""
    params = dict(model.named_parameters())
    out = {}
    for g in groups:
        s = torch.zeros(g.units, dtype=torch.float64)
        for m in g.members:
            if m.role != "consumer" or m.param not in stats:
                continue
            col = per_column(params[m.param].detach().double(), *stats[m.param])
            for u, ix in enumerate(m.index):
                s[u] += col[list(ix)].sum()
        out[g.id] = s.float()
    return out


def wanda_col(W: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor, n: int) -> torch.Tensor:
    """Wanda-sp: Σ_i |W_ij| · ‖x_j‖₂."""
    return W.abs().sum(0) * sxx.sqrt()


def flap_col(W: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor, n: int) -> torch.Tensor:
    """FLAP fluctuation: sample variance of x_j × ‖W[:, j]‖²."""
    var = (sxx - sx * sx / n) / (n - 1)
    return var * (W * W).sum(0)


def lm_setup(quick: bool) -> tuple[nn.Module, list, list]:
    """(tiny LM, calibration batches, held-out batches) as the CLI builds them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowprune import data as fdata
    from flowprune.cli import default_model

    src = str(default_model())
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    n = 16 if quick else 32
    calib = fdata.python_docs(tok, "train", seq_len=128, num_samples=n)
    held = fdata.python_docs(tok, "test", seq_len=128, num_samples=n)
    return model, calib, held


def section_lm(quick: bool) -> None:
    from flowprune.score import perplexity

    print("\n## 3. Shipped tiny LM (Llama, 6 layers), MLP neurons + heads, no fine-tuning\n")
    model, calib, held = lm_setup(quick)
    graph = flowprune.trace(model, calib[0])
    groups = graph.channel_groups()
    prunable = list(groups.prunable())
    total = sum(p.numel() for p in model.parameters())
    stats = consumer_inputs(model, prunable, calib)
    methods = {
        "L2 magnitude": magnitude_scores(model, prunable, p=2),
        "Wanda-sp": column_scores(model, prunable, stats, wanda_col),
        "FLAP": column_scores(model, prunable, stats, flap_col),
    }
    dense = perplexity(model, held)
    rows, notes = [], set()
    for target in (0.2, 0.5):
        ratio, _ = bisect_ratio(groups, methods["L2 magnitude"], target, "layer", False, total)
        for name, scores in methods.items():
            removed = select_units(prunable, scores, ratio, "layer")
            cells, share = [], None
            for fill in ("zeros", "obs", "mean"):
                small, plan = fp_prune(graph, removed, fill, calib)
                if small is None:
                    notes.add(f"fill '{fill}': {plan}")
                    cells.append("n/a")
                    continue
                share = plan.params_removed / plan.params_before
                cells.append(f"{perplexity(small, held):.2f}")
            rows.append([f"{target:.0%}", f"{ratio:.3f}", f"{share:.1%}", name, *cells])
            log(f"LM {target:.0%} {name}")
        # flowprune's own: OBS cost (and Wanda-sp) ranked per saved parameter under one global budget
        for name, scores in (
            ("OBS cost, global", unit_scores(graph, calib, ["obs"])["obs"]),
            ("Wanda-sp, global", methods["Wanda-sp"]),
        ):
            removed = select_budget(prunable, scores, params=target * total)
            cells, share = [], None
            for fill in ("zeros", "obs"):
                small, plan = fp_prune(graph, removed, fill, calib)
                share = plan.params_removed / plan.params_before
                cells.append(f"{perplexity(small, held):.2f}")
            rows.append([f"{target:.0%}", "global", f"{share:.1%}", name, *cells, ""])
            log(f"LM {target:.0%} {name}")
    kinds = {g.kind: g.units for g in prunable}
    print(
        f"{total / 1e6:.2f} M parameters (tied embeddings counted once); prunable groups per layer: "
        f"MLP neurons ({kinds.get('channels')}) and key/value head groups ({kinds.get('heads')}: "
        f"2 query heads + 1 key/value head each).  Calibration {sum(len(b['input_ids']) for b in calib)}"
        f" x 128 tokens of CPython's docs (train split), held-out "
        f"{sum(len(b['input_ids']) for b in held)} x 128 (test split).  Dense held-out perplexity "
        f"**{dense:.2f}**.\n"
    )
    print(
        table(
            ["target", "per-layer ratio", "params removed", "score", "zeros", "obs", "mean"],
            rows,
        )
    )
    print(
        "\nHeld-out perplexity.  One per-layer ratio for every group, bisected on the parameter "
        "share; a layer's 2 head groups lose 1 at any ratio > 0 (select_units rounds as Torch-Pruning does), so both "
        "targets halve the heads and the MLP ratio makes up the rest.  Wanda-sp: Σ_i |W_ij|·‖x_j‖ over "
        "the unit's consumer columns j (down_proj / o_proj inputs); FLAP: sample variance of x_j × "
        "‖W[:, j]‖², summed likewise (per-layer ratio, so FLAP's cross-layer standardisation does not "
        "matter).  Rows marked global: one ranking of all units by score per saved parameter "
        "(score.units.select_budget) until the target share of parameters goes."
    )
    for n in sorted(notes):
        print(f"\n- {n}")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs, smaller calibration")
    ap.add_argument(
        "--sections", default="1,2,3", help="comma-separated sections to run (default all)"
    )
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(
        f"# Structured pruning without fine-tuning: flowprune vs Torch-Pruning "
        f"{importlib.metadata.version('torch-pruning')}\n"
    )
    print(
        f"`{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}` "
        f"(torch {torch.__version__}, flowprune {flowprune.__version__}, "
        f"{torch.get_num_threads()} thread)"
    )
    t0 = time.perf_counter()
    todo = set(args.sections.split(","))
    if "1" in todo:
        section_mlp(args.quick)
    if "2" in todo:
        for n in (3,) if args.quick else (3, 9):  # ResNet-20; ResNet-56 in the full run
            section_resnet(args.quick, n)
    if "3" in todo:
        section_lm(args.quick)
    print(f"\n_total {time.perf_counter() - t0:.0f} s_")


if __name__ == "__main__":
    main()
