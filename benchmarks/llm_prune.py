"""LLM pruning: quality on the shipped tiny LM, speed on a larger random-config Llama.

    python benchmarks/llm_prune.py        # prints Markdown tables, writes benchmarks/results/llm_prune.md

Quality: the shipped model (data/tiny-llama-pydocs), calibrated on 32 × 128 tokens of the train split of
CPython's docs, evaluated by perplexity on 64 × 128 held-out tokens; 25 % and 50 % of its layers or of its
sublayers (attention / MLP branches) removed, for each criterion/strategy and, for sublayers, each fill.
Speed: a 12-layer Llama (hidden 1024, random weights) — prefill latency of 1 × 256 tokens and greedy decode
tokens/s (KV cache, 64 new tokens) before and after the same removals, against the ideal speedup
1 / (remaining fraction of FLOPs).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from timing import median_seconds

import flowprune
from flowprune import Budget
from flowprune.cli import default_model
from flowprune.data import python_docs
from flowprune.plan import write_atomic
from flowprune.score import perplexity

PLANS = [
    ("loss", "greedy"),
    ("taylor2", "one_shot"),
    ("taylor2", "quadratic"),
    ("flow", "one_shot"),
    ("shortgpt", "one_shot"),
    ("llmdrop", "one_shot"),
    ("random", "one_shot"),
]


def quality() -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model()).eval()  # a plain HF folder
    tok = AutoTokenizer.from_pretrained(default_model())
    calib = python_docs(tok, "train", seq_len=128, num_samples=32)
    held = python_docs(tok, "test", seq_len=128, num_samples=64)
    base = perplexity(model, held)
    rows = [
        f"Shipped tiny LM: {sum(p.numel() for p in model.parameters()):,} parameters, held-out perplexity "
        f"{base:.3f}.",
        "",
        "| removed | criterion | strategy | fill | removals | params removed | "
        "calib ΔL (gated) | calib ΔL (rewritten) | held-out ppl |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    full = flowprune.analyze(model, calib, criteria=("flow", "loss", "taylor2"), progress=False)
    for kind in ("layer", "branch"):
        n = sum(r["kind"] == kind for r in full.candidates)
        for frac in (0.25, 0.5):
            k = max(1, round(frac * n))
            for crit, strat in PLANS:
                for fill in ("zeros", "mean", "linear") if kind == "branch" else ("zeros",):
                    rep = full.copy().restrict(kind)
                    plan = rep.plan(Budget(count=k), criterion=crit, strategy=strat, fill=fill)
                    small = flowprune.apply(model, plan, data=calib)
                    last = rep.plans[-1]
                    rows.append(
                        f"| {frac:.0%} of {n} {kind}s | {crit} | {strat} | {fill} | {k} | "
                        f"{plan.params_removed / plan.params_before:.1%} | {last['measured']:.4f} | "
                        f"{rep.measure_model(small):.4f} | {perplexity(small, held):.3f} |"
                    )
                    print(rows[-1], flush=True)
    return rows


def speed() -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=8192,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 8192, (1, 256), generator=gen)
    graph = flowprune.trace(model, {"input_ids": prompt[:, :32], "use_cache": False})

    def measure(m) -> tuple[float, float]:
        with torch.no_grad():
            pre = median_seconds(lambda: m(input_ids=prompt, use_cache=False))
            new = 64
            dec = median_seconds(
                lambda: m.generate(
                    prompt[:, :16],
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                ),
                2,
            )
        return pre, new / dec

    pre0, tps0 = measure(model)
    rows = [
        f"Llama 12 × 1024 ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, random "
        f"weights), {torch.get_num_threads()} threads: prefill {pre0 * 1e3:.0f} ms for 256 tokens, decode "
        f"{tps0:.1f} tokens/s.",
        "",
        "| removed | params removed | FLOPs removed | ideal speedup | prefill ms | prefill speedup | "
        "decode tokens/s | decode speedup | decode / ideal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("layer", "branch"):
        cands = [c.id for c in graph.candidates(kind)]
        for frac in (0.25, 0.5):
            k = round(frac * len(cands))
            ids = cands[len(cands) - k :]  # the last ones: which ones does not matter for speed
            plan = graph.plan(ids)
            small = flowprune.apply(model, plan)
            pre, tps = measure(small)
            ideal = plan.flops_before / (plan.flops_before - plan.flops_removed)
            rows.append(
                f"| {frac:.0%} of {len(cands)} {kind}s | {plan.params_removed / plan.params_before:.1%} | "
                f"{plan.flops_removed / plan.flops_before:.1%} | {ideal:.2f}× | {pre * 1e3:.0f} | "
                f"{pre0 / pre:.2f}× | {tps:.1f} | {tps / tps0:.2f}× | {tps / tps0 / ideal:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    text = (
        "\n".join(
            ["# LLM pruning", "", "## Quality (shipped tiny LM, CPython docs)", ""]
            + quality()
            + ["", "## Speed (random-config Llama)", ""]
            + speed()
            + ["", f"torch {torch.__version__}; total {time.perf_counter() - t0:.0f} s"]
        )
        + "\n"
    )
    write_atomic(Path(__file__).parent / "results" / "llm_prune.md", text)
    print("\n" + text)


if __name__ == "__main__":
    main()
