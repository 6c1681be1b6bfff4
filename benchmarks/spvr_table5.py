"""SPvR's Table 5: how well each criterion ranks the hidden neurons of a small MLP, as Kendall τ
against the ground truth (the number of evaluation-split misclassifications with that neuron alone
masked), for SPvR's own ranking, KL, and every flowprune criterion.

    python benchmarks/spvr_table5.py            # seeds 0..4; prints the command and a Markdown table
    python benchmarks/spvr_table5.py --seeds 10 --epochs 200

Protocol (SPvR): ``make_classification(n_samples=1000, n_features=100, flip_y=0.02,
random_state=seed)`` (other arguments at scikit-learn's defaults), split stratified 60/20/20 into
train / calibration / evaluation; Linear(100, 64) → ReLU → Linear(64, 2) trained with Adam (lr 1e-3)
on cross-entropy, minibatches of 32, ``--epochs`` epochs (default 200: the training loss is ~0).  Two
columns: the criteria computed on the evaluation samples themselves (as in the paper: the ground truth
is measured on the same samples) and on the held-out calibration split (nothing of the evaluation set
is seen).  Kendall τ is ``scipy.stats.kendalltau`` (τ-b; the ground truth has many ties).  Also
printed: τ between the ground truth measured on the calibration split and on the evaluation split (how
reproducible the ground truth itself is).  About 25 s for 5 seeds on one thread.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import Tensor, nn

import flowprune
from flowprune.channels import ChannelGroup, UnitGates, unit_magnitude
from flowprune.channels.compensate import _weight_2d, consumer_stats, obs_cost
from flowprune.channels.magnitude import lamp
from flowprune.score.engine import Engine
from flowprune.score.taylor import fisher, gradient_and_hessian

PAPER = {"spvr": "0.861", "kl": "0.586"}
CRITERIA = (
    "spvr",
    "kl",
    "loss",
    "taylor1",
    "taylor2",
    "fisher",
    "magnitude_l1",
    "magnitude_l2",
    "lamp",
    "taylor_w",
    "obs",
    "random",
)
HIDDEN = 64


def make_data(seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """{"train", "calib", "eval"}: (X float32, y int64), a stratified 60/20/20 split."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    X, y = make_classification(n_samples=1000, n_features=100, flip_y=0.02, random_state=seed)
    Xtr, Xrest, ytr, yrest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=seed)
    Xc, Xe, yc, ye = train_test_split(
        Xrest, yrest, test_size=0.5, stratify=yrest, random_state=seed
    )

    def t(a: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long)

    return {"train": t(Xtr, ytr), "calib": t(Xc, yc), "eval": t(Xe, ye)}


def train(X: Tensor, y: Tensor, seed: int, epochs: int = 200, batch: int = 32) -> nn.Sequential:
    """The MLP trained with Adam (lr 1e-3) on cross-entropy, shuffled minibatches."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(X.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def masked_logits(model: nn.Module, group: ChannelGroup, X: Tensor) -> Tensor:
    """[units, N, classes]: the logits with each unit alone masked (``UnitGates``, α_u = 0)."""
    out = []
    with UnitGates(model, [group]) as gates:
        for u in range(group.units):
            gates.reset()
            gates.set({group.id: [u]}, 0.0)
            out.append(model(X))
    return torch.stack(out)


def ground_truth(model: nn.Module, group: ChannelGroup, X: Tensor, y: Tensor) -> np.ndarray:
    """Misclassifications on (X, y) with each unit alone masked."""
    pred = masked_logits(model, group, X).argmax(-1)
    return (pred != y).sum(1).numpy()


def output_criteria(
    model: nn.Module, group: ChannelGroup, X: Tensor, y: Tensor
) -> dict[str, np.ndarray]:
    """SPvR's ranking (Σ misclassified + |Δp| of the originally predicted class) and Σ KL(p || p_u)."""
    with torch.no_grad():
        logp = F.log_softmax(model(X).double(), -1)  # [N, K]
    logq = F.log_softmax(masked_logits(model, group, X).double(), -1)  # [U, N, K]
    top = logp.argmax(-1)
    p_top = logp.exp().gather(1, top[:, None])[:, 0]
    q_top = logq.exp().gather(2, top[None, :, None].expand(len(logq), -1, 1))[..., 0]
    wrong = (logq.argmax(-1) != y).double()
    spvr = (wrong + (q_top - p_top).abs()).sum(1)
    kl = (logp.exp() * (logp - logq)).sum(-1).sum(1)
    return {"spvr": spvr.numpy(), "kl": kl.numpy()}


def taylor_w(model: nn.Module, group: ChannelGroup, X: Tensor, y: Tensor) -> np.ndarray:
    """Σ |w · ∂L/∂w| over every weight (and bias) the unit owns, L the mean cross-entropy."""
    params = dict(model.named_parameters())
    model.zero_grad()
    F.cross_entropy(model(X), y).backward()
    score = torch.zeros(group.units, dtype=torch.float64)
    with torch.no_grad():
        for m in group.members:
            p = params.get(m.param)
            if p is None or p.grad is None:
                continue
            wg = (p * p.grad).abs().movedim(m.dim, 0).reshape(p.shape[m.dim], -1).sum(1)
            for u, ix in enumerate(m.index):
                score[u] += float(wg[list(ix)].sum())
    model.zero_grad()
    return score.numpy()


def obs_scores(model: nn.Module, group: ChannelGroup, X: Tensor) -> np.ndarray:
    """OBS cost of removing each unit's input column from its consumer (the output layer)."""
    (cons,) = [m.param for m in group.members if m.role == "consumer"]
    stats = consumer_stats(model, [cons], [X])[cons]
    W = _weight_2d(model.get_submodule(cons.rpartition(".")[0]), "linear")
    return np.array([obs_cost(stats, W, [u]) for u in range(group.units)])


def scores(
    model: nn.Module, group: ChannelGroup, graph, X: Tensor, y: Tensor, seed: int
) -> dict[str, np.ndarray]:
    """Every criterion on (X, y); higher = more important."""
    out = output_criteria(model, group, X, y)
    gates = UnitGates(model, [group])
    with Engine(graph, [(X, y)], "ce", gates=gates, progress=False) as eng:
        g, H = gradient_and_hessian(eng, hessian="full")
        _, Fm = fisher(eng)
        base = eng.loss()
        out["loss"] = np.array([eng.loss([c.id]) - base for c in eng.candidates])
    out["taylor1"] = g.abs().numpy()
    out["taylor2"] = (-g + 0.5 * H.diagonal()).numpy()
    out["fisher"] = Fm.diagonal().numpy()
    out["magnitude_l1"] = unit_magnitude(model, group, p=1).numpy()
    out["magnitude_l2"] = unit_magnitude(model, group, p=2).numpy()
    out["lamp"] = lamp(model, group).numpy()
    out["taylor_w"] = taylor_w(model, group, X, y)
    out["obs"] = obs_scores(model, group, X)
    out["random"] = np.random.default_rng(seed).random(group.units)
    return out


def tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall τ-b; 0 where one side is constant (scipy gives NaN)."""
    t = kendalltau(a, b).statistic
    return 0.0 if np.isnan(t) else float(t)


def run_seed(seed: int, epochs: int = 200) -> dict[str, dict[str, float]]:
    """{"same": {criterion: τ}, "calib": {...}, "info": {...}} for one seed."""
    data = make_data(seed)
    model = train(*data["train"], seed=seed, epochs=epochs)
    Xe, ye = data["eval"]
    graph = flowprune.trace(model, data["calib"][0][:64])
    (group,) = graph.channel_groups().prunable()
    gt = ground_truth(model, group, Xe, ye)
    res: dict[str, dict[str, float]] = {}
    for col, (X, y) in (("same", data["eval"]), ("calib", data["calib"])):
        s = scores(model, group, graph, X, y, seed)
        res[col] = {k: tau(s[k], gt) for k in CRITERIA}
    with torch.no_grad():
        acc = float((model(Xe).argmax(-1) == ye).float().mean())
    gt_calib = ground_truth(model, group, *data["calib"])
    res["info"] = {
        "eval_acc": acc,
        "distinct_gt": float(len(np.unique(gt))),
        "gt_spread": float(gt.max() - gt.min()),
        "gt_vs_calib_gt": tau(gt_calib, gt),
    }
    return res


def table(results: list[dict[str, dict[str, float]]]) -> str:
    """The Markdown table: criterion | τ (same samples) | τ (held-out calibration) | paper."""

    def cell(col: str, k: str) -> str:
        v = np.array([r[col][k] for r in results])
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

    lines = [
        "| criterion | Kendall τ, same samples | Kendall τ, held-out calibration | paper |",
        "|---|---|---|---|",
    ]
    order = sorted(CRITERIA, key=lambda k: -np.mean([r["same"][k] for r in results]))
    for k in order:
        lines.append(f"| {k} | {cell('same', k)} | {cell('calib', k)} | {PAPER.get(k, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--epochs", type=int, default=200, help="training epochs (default 200)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log(
        "$ python " + " ".join(shlex.quote(a) for a in ["benchmarks/spvr_table5.py", *sys.argv[1:]])
    )
    results = []
    for seed in range(args.seeds):
        results.append(run_seed(seed, args.epochs))
        info = results[-1]["info"]
        log(
            f"seed {seed}: eval accuracy {info['eval_acc']:.3f}, "
            f"{int(info['distinct_gt'])} distinct ground-truth values (max - min "
            f"{int(info['gt_spread'])}), τ(ground truth on the calibration split, ground truth) "
            f"{info['gt_vs_calib_gt']:+.3f}"
        )
    out = table(results)
    log("")
    log(
        f"Kendall τ against the ground truth (misclassifications on the 200 evaluation samples with "
        f"one hidden neuron masked), mean ± sd over {args.seeds} seeds, {args.epochs} epochs:"
    )
    log("")
    log(out)
    ceiling = np.array([r["info"]["gt_vs_calib_gt"] for r in results])
    log("")
    log(
        f"The same ground truth measured on the calibration split instead: τ {ceiling.mean():.3f} ± "
        f"{ceiling.std(ddof=1) if len(ceiling) > 1 else 0.0:.3f} against the evaluation one."
    )
    return out


if __name__ == "__main__":
    main()
