"""How faithfully flowprune's cheap criteria rank removals, and what each criterion/strategy leaves.

    python benchmarks/fidelity.py                 # prints Markdown, writes benchmarks/results/fidelity.md
    python benchmarks/fidelity.py --threads 1 --lm-steps 300    # quicker, or when another process holds a core

Two models are trained here, from data that ships with Python and scikit-learn (no network):

* a byte-level Llama (6 layers, hidden 64) on the Python docs (``pydoc_data.topics``), first 90 % of the
  bytes for training, last 10 % held out; quality = held-out perplexity (32 sequences of 64 bytes);
* a small ResNet (stem + 4 BasicBlocks at 16 channels) on ``sklearn.datasets.load_digits``; quality =
  test accuracy (80/20 split).

``flowprune.analyze`` (loss="distill": KL to the unpruned model's logits) scores every candidate on the
calibration batches.  Table 1: rank agreement of each criterion with the exact ΔL of removing the
candidate alone.  Table 2: remove k candidates with each (criterion, strategy), then report removed
parameters, predicted and measured calibration ΔL and held-out quality of ``flowprune.apply``'s copy.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import flowprune
from flowprune import Budget, Report
from flowprune.plan import write_atomic

CRITERIA = ("flow", "loss", "taylor2", "fisher")
ONE_SHOT = ("loss", "taylor2", "fisher", "flow", "shortgpt", "llmdrop", "magnitude", "random")
SEQ = 64


# -- small helpers ------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else f"{v:.4g}"
        return "–" if v is None else str(v)

    align = (
        ["---" if isinstance(v, str) else "---:" for v in rows[0]]
        if rows
        else ["---"] * len(header)
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def short(cid: str) -> str:
    """'model.layers.3.self_attn:branch' -> '3.self_attn'; 'blocks.2:layer' -> '2:layer'."""
    path, _, kind = cid.partition(":")
    for prefix in ("model.layers.", "blocks."):
        path = path.removeprefix(prefix)
    return path if kind == "branch" else f"{path}:{kind}"


def restrict(report: Report, kind: str) -> Report:
    """A live report whose candidates are only those of ``kind``, sharing the original model and data."""
    return report.copy().restrict(kind)


# -- causal LM on the Python docs -------------------------------------------------------------------------
def lm_setup(steps: int) -> dict:
    from pydoc_data.topics import topics

    from transformers import LlamaConfig, LlamaForCausalLM

    data = torch.tensor(list("\n".join(topics.values()).encode()), dtype=torch.long)
    cut = int(0.9 * len(data))
    train, held = data[:cut], data[cut:]

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, len(train) - SEQ, (n,), generator=gen)
        return torch.stack([train[s : s + SEQ] for s in starts.tolist()])

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg)
    assert model.config._attn_implementation == "eager"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (1 - 0.9 * s / steps)
    )
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = sample(16, gen)
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    model.eval()

    starts = (
        torch.linspace(0, len(held) - SEQ - 1, 32).long().tolist()
    )  # 32 evenly spaced held-out windows
    held_x = torch.stack([held[s : s + SEQ] for s in starts])

    @torch.no_grad()
    def perplexity(m: nn.Module) -> float:
        m.eval()
        logits = m(input_ids=held_x, use_cache=False).logits
        return math.exp(
            F.cross_entropy(logits[:, :-1].flatten(0, 1), held_x[:, 1:].flatten()).item()
        )

    cgen = torch.Generator().manual_seed(1)
    calib = [{"input_ids": sample(4, cgen)} for _ in range(8)]
    info = (
        f"{sum(p.numel() for p in model.parameters()):,} params; {steps} AdamW steps (batch 16 × {SEQ}) "
        f"on {len(train):,} training bytes; held-out: 32 × {SEQ} of {len(held):,} bytes"
    )
    return dict(
        name="Byte-level Llama on the Python docs",
        model=model,
        calib=calib,
        quality=perplexity,
        qname="held-out ppl",
        qfmt="{:.3f}",
        train_s=train_s,
        info=info,
    )


# -- ResNet on digits -------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x)


class DigitsResNet(nn.Module):
    def __init__(self, ch: int = 16, blocks: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[BasicBlock(ch) for _ in range(blocks)])
        self.fc = nn.Linear(ch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def cnn_setup(epochs: int) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    itr, ite = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    Xtr, ytr, Xte, yte = X[itr], y[itr], X[ite], y[ite]

    torch.manual_seed(0)
    model = DigitsResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=gen).split(64):
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t0
    model.eval()

    @torch.no_grad()
    def accuracy(m: nn.Module) -> float:
        m.eval()
        return (m(Xte).argmax(1) == yte).float().mean().item()

    cidx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(1))[:128].split(32)
    calib = [(Xtr[i], ytr[i]) for i in cidx]
    info = (
        f"{sum(p.numel() for p in model.parameters()):,} params; {epochs} epochs of Adam (batch 64) on "
        f"{len(ytr)} images; test: {len(yte)} images"
    )
    return dict(
        name="ResNet (4 BasicBlocks) on sklearn digits",
        model=model,
        calib=calib,
        quality=accuracy,
        qname="test acc",
        qfmt="{:.4f}",
        train_s=train_s,
        info=info,
    )


# -- the benchmark ----------------------------------------------------------------------------------------
def plan_rows(setup: dict, report: Report, ks: tuple[int, ...]) -> list[list]:
    model, quality = setup["model"], setup["quality"]
    runs = [(c, "one_shot") for c in ONE_SHOT if c in report.criteria]
    runs += [("loss", "greedy"), ("taylor2", "quadratic")]
    rows = [["(none)", "–", 0, 0.0, 0.0, 0.0, setup["base_quality"], "–"]]
    for k in ks:
        for crit, strategy in runs:
            plan = report.plan(Budget(count=k), criterion=crit, strategy=strategy)
            p = report.plans[-1]
            q = quality(flowprune.apply(model, plan))
            rows.append(
                [
                    crit if strategy == "one_shot" else f"({p['criterion']})",
                    strategy,
                    k,
                    100.0 * plan.params_removed / plan.params_before,
                    p["predicted"],
                    p["measured"],
                    q,
                    ", ".join(short(i) for i in p["removals"]),
                ]
            )
    return rows


def run(setup: dict, blocks: list[tuple[str, str | None, tuple[int, ...]]]) -> str:
    model = setup["model"]
    setup["base_quality"] = setup["quality"](model)
    t0 = time.perf_counter()
    report = flowprune.analyze(
        model, setup["calib"], loss="distill", criteria=CRITERIA, progress=False
    )
    analyze_s = time.perf_counter() - t0
    kinds = {}
    for r in report.candidates:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    out = [
        f"## {setup['name']}",
        "",
        f"{setup['info']}.  Trained in {setup['train_s']:.1f} s; {setup['qname']} "
        + setup["qfmt"].format(setup["base_quality"])
        + ".",
        "",
        f"Candidates: {', '.join(f'{n} {k}' for k, n in kinds.items())}; calibration: "
        f"{report.data['num_samples']} samples, base distill loss {report.base_loss:.3g} (0 by construction).  "
        f"analyze: {analyze_s:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in report.data["timings"].items())
        + ").",
        "",
    ]
    if report.data.get("dropped"):
        out += [f"Candidates dropped by the gate self-check: {report.data['dropped']}", ""]
    fid = sorted(report.fidelity.items(), key=lambda kv: -kv[1]["spearman"])
    out += [
        "### Table 1: agreement with the exact ΔL of removing each candidate alone",
        "",
        table(
            ["criterion", "Spearman", "Kendall"], [[c, v["spearman"], v["kendall"]] for c, v in fid]
        ),
        "",
    ]
    for title, kind, ks in blocks:
        sub = report if kind is None else restrict(report, kind)
        n = len(sub.candidates)
        out += [f"### Table 2 ({title}, {n} candidates): quality after removing k", ""]
        if kind is not None:
            fid = sorted(sub.fidelity.items(), key=lambda kv: -kv[1]["spearman"])
            out += [
                "Agreement within this block (Spearman): "
                + ", ".join(f"{c} {v['spearman']:.2f}" for c, v in fid)
                + ".",
                "",
            ]
        out += [
            table(
                [
                    "criterion",
                    "strategy",
                    "k",
                    "params removed %",
                    "predicted ΔL",
                    "measured ΔL",
                    setup["qname"],
                    "removed",
                ],
                plan_rows(setup, sub, ks),
            ),
            "",
        ]
    return "\n".join(out)


NOTES = """Notes.  ΔL is the calibration loss change (distill: KL to the unpruned model, per token for the LM).
"predicted ΔL": for one_shot/loss the sum of the single-removal ΔLs; for greedy the exact ΔL of its set;
otherwise the gate-space second-order Taylor prediction with the exact gate Hessian (pairwise terms
included).  quadratic minimises that prediction; greedy re-measures every remaining candidate after each
removal.  Criteria: higher = more important, removed last; `shortgpt` scores a branch by its enclosing
layer (ties with the layer, which comes first); `taylor1` = −g is rounding noise (|g| < 1e-7): the distill
loss is at its minimum at α = 1, so its correlations mean nothing.  The "sublayers" block restricts the
report to branch candidates by rebuilding a Report on the same engine with the branch rows and the
matching sub-block of g and H (Report.plan has no candidate filter)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm-steps", type=int, default=600)
    ap.add_argument("--cnn-epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    parts = [
        "# Criterion fidelity and pruning quality",
        "",
        f"flowprune {flowprune.__version__}, torch {torch.__version__}, "
        f"torch.set_num_threads({torch.get_num_threads()}).",
        "",
    ]
    print("\n".join(parts), flush=True)
    models = [
        (
            lambda: lm_setup(args.lm_steps),
            [("all candidates", None, (2, 4)), ("sublayers", "branch", (2, 4))],
        ),
        (lambda: cnn_setup(args.cnn_epochs), [("all candidates", None, (1, 2))]),
    ]
    for build, blocks in models:
        parts.append(run(build(), blocks))
        print(parts[-1], flush=True)
    parts += [NOTES, "", f"Total runtime: {time.perf_counter() - t0:.1f} s."]
    print("\n".join(parts[-3:]))
    write_atomic(args.out, "\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
