"""Cost of each scoring stage as a multiple of plain passes, measured in the same run.

    python benchmarks/score_cost.py     # prints a Markdown table, writes benchmarks/results/score_cost.md

Models: a 12-layer Llama from a random config (hidden 256, 4 batches of 4×128 tokens), a ResNet for
32×32 images (8 basic blocks, 32 channels, 4 batches of 32), and the same Llama at hidden 512 (flow and
ablation only), whose LM head is a smaller share of the compute, as in real LLMs.  "forward" is one
plain ``model(batch)`` under no_grad over all batches; "fwd+bwd" adds a backward to the parameters.
Flow and ablation are
divided by forward, the Taylor stages by fwd+bwd.  Targets (issue 3): flow ≤ 1.3 forwards; replayed
ablation ≤ 0.6 of naive.

Allocator: glibc returns freed memory to the system between passes and page-faults it back in; which
variant pays how much for that depends on the allocator's state, not on the work done (one run showed
replayed ablation with 10⁵ minor faults and naive with none, and the next the reverse).  The script
therefore re-runs itself with glibc's trim and mmap thresholds fixed (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``), as production PyTorch CPU setups fix or replace the allocator;
``--system-malloc`` keeps the machine's defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from timing import median_seconds
from torch import nn

import flowprune
from flowprune.flow import information_flow
from flowprune.graph.trace import call_model
from flowprune.plan import write_atomic
from flowprune.score.ablation import ablate
from flowprune.score.engine import Engine, replay_sources
from flowprune.score.taylor import fisher, gradient_and_hessian
from flowprune.zoo.nets import BasicBlock


def llama(hidden: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=2048,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    gen = torch.Generator().manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), [
        {"input_ids": torch.randint(0, 2048, (4, 128), generator=gen)} for _ in range(4)
    ]


def llama512():
    return llama(512)


class ResNet(nn.Module):
    def __init__(self, width: int = 32, blocks: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks)])
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def resnet():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    return ResNet().eval(), [torch.randn(32, 3, 32, 32, generator=gen) for _ in range(4)]


def ideal_ratio(eng: Engine) -> float:
    """FLOPs of replayed ablation / naive ablation: per candidate, what remains after its replayed
    modules (ablate's own choice of sources) is recomputed; naive recomputes everything."""
    from flowprune.score.ablation import _own

    g = eng.graph
    cands = sorted(eng.candidates, key=lambda c: g.call(c.cid).start, reverse=True)
    total = g.total_flops
    flops = {rec.key: rec.flops for rec in g.calls}  # replay sources are call keys ("path#k")
    kept = [
        total - sum(flops[k] for k in replay_sources(g, c) + _own(eng, c, cands[0])) for c in cands
    ]
    return sum(kept) / (total * len(cands))


def measure(name: str, model: nn.Module, batches: list, taylor: bool = True) -> list[str]:
    graph = flowprune.trace(model, batches[0])

    def forward():
        with torch.no_grad():
            for b in batches:
                call_model(model, b)

    def fwd_bwd():
        for b in batches:
            out = call_model(model, b)
            out = getattr(out, "logits", out)
            out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    t_f, t_fb = median_seconds(forward), median_seconds(fwd_bwd)
    with Engine(graph, batches, "distill", progress=False) as eng:
        C = len(eng.candidates)
        t_flow = median_seconds(lambda: information_flow(eng))
        eng.references()
        base = eng.loss()  # known before ablation in analyze: neither variant needs a base pass
        t_rep = median_seconds(lambda: ablate(eng, replay=True, base_loss=base), 1, warmup=False)
        t_naive = median_seconds(lambda: ablate(eng, replay=False, base_loss=base), 1, warmup=False)
        ideal = f"| {name} | {C} | replay / naive by FLOPs (ideal) | – | {ideal_ratio(eng):.3f} |"
        if not taylor:
            return [
                f"| {name} | {C} | flow (one pass, all statistics) | {t_flow:.3f} | {t_flow / t_f:.2f} forwards |",
                f"| {name} | {C} | exact ablation, replay | {t_rep:.3f} | {t_rep / t_f:.1f} forwards = "
                f"{t_rep / t_naive:.2f} × naive |",
                f"| {name} | {C} | exact ablation, naive | {t_naive:.3f} | {t_naive / t_f:.1f} forwards |",
                ideal,
                f"| {name} | {C} | (plain forward) | {t_f:.3f} | 1 |",
            ]
        t_g = median_seconds(lambda: gradient_and_hessian(eng, hessian="none"), 1, warmup=False)
        t_h = median_seconds(lambda: gradient_and_hessian(eng, hessian="full"), 1, warmup=False)
        t_fi = median_seconds(lambda: fisher(eng), 1, warmup=False)
    return [
        f"| {name} | {C} | flow (one pass, all statistics) | {t_flow:.3f} | {t_flow / t_f:.2f} forwards |",
        f"| {name} | {C} | exact ablation, replay | {t_rep:.3f} | {t_rep / t_f:.1f} forwards = "
        f"{t_rep / t_naive:.2f} × naive |",
        f"| {name} | {C} | exact ablation, naive | {t_naive:.3f} | {t_naive / t_f:.1f} forwards |",
        ideal,
        f"| {name} | {C} | gate gradient (taylor1) | {t_g:.3f} | {t_g / t_fb:.2f} fwd+bwd |",
        f"| {name} | {C} | full gate Hessian (taylor2) | {t_h:.3f} | {t_h / t_fb:.1f} fwd+bwd |",
        f"| {name} | {C} | Fisher (per-sample gradients) | {t_fi:.3f} | {t_fi / t_fb:.1f} fwd+bwd |",
        f"| {name} | {C} | (plain forward / fwd+bwd) | {t_f:.3f} / {t_fb:.3f} | 1 |",
    ]


FIXED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**31), "MALLOC_MMAP_THRESHOLD_": str(2**31)}


def main() -> None:
    system = "--system-malloc" in sys.argv
    if not system and any(os.environ.get(k) != v for k, v in FIXED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **FIXED_MALLOC})
    torch.set_num_threads(2)
    rows = ["| model | candidates | stage | seconds | relative cost |", "|---|---:|---|---:|---|"]
    for name, make, taylor in (
        ("llama 12x256", llama, True),
        ("resnet 8 blocks", resnet, True),
        ("llama 12x512", llama512, False),
    ):
        new = measure(name, *make(), taylor=taylor)
        rows += new
        print("\n".join(new), flush=True)
    alloc = "glibc defaults" if system else "glibc trim/mmap thresholds fixed"
    text = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {alloc}\n\n"
        + "\n".join(rows)
        + "\n"
    )
    name = "score_cost_system_malloc.md" if system else "score_cost.md"
    write_atomic(Path(__file__).parent / "results" / name, text)
    print("\n" + text)


if __name__ == "__main__":
    main()
