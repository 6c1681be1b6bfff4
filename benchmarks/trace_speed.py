"""Tracing time as a multiple of one plain forward, for every zoo model (and two larger LMs).

    python benchmarks/trace_speed.py            # prints a Markdown table, writes benchmarks/results/trace_speed.md

Both times are medians over repeats measured in the same run: forward = ``model(inputs)`` under
``torch.no_grad()`` in eval mode; trace = ``flowprune.trace(model, inputs)`` (one recorded forward plus
building the graph; candidates are found lazily and timed separately).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import median_seconds

import flowprune
from flowprune.graph.trace import call_model
from flowprune.plan import write_atomic
from flowprune.zoo import ZOO, ZooEntry


def _larger() -> dict[str, ZooEntry]:
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(layers: int, hidden: int, seq: int):
        def build():
            torch.manual_seed(0)
            cfg = LlamaConfig(
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=8,
                num_key_value_heads=4,
                vocab_size=4096,
            )
            return LlamaForCausalLM(cfg).eval()

        return ZooEntry(
            f"llama-{layers}x{hidden}",
            build,
            lambda: {
                "input_ids": torch.randint(
                    0, 4096, (1, seq), generator=torch.Generator().manual_seed(0)
                ),
                "use_cache": False,
            },
            "llm",
        )

    return {e.name: e for e in (llama(12, 256, 128), llama(12, 512, 256))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "trace_speed.md"
    )
    args = ap.parse_args()
    rows = [
        "| model | params | vertices | candidates | forward ms | trace ms | trace / forward | candidates ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in {**ZOO, **_larger()}.items():
        model, x = e.build(), e.inputs()
        with torch.no_grad():
            call_model(model, x)  # warm-up
            fwd = median_seconds(lambda: call_model(model, x), args.repeats)
        tr = median_seconds(lambda: flowprune.trace(model, x), args.repeats)
        g = flowprune.trace(model, x)
        t0 = time.perf_counter()
        n = len(g.candidates())
        cand = time.perf_counter() - t0
        rows.append(
            f"| {name} | {sum(p.numel() for p in model.parameters()):,} | {g.nx.number_of_nodes()} | {n} | "
            f"{fwd * 1e3:.2f} | {tr * 1e3:.1f} | {tr / fwd:.1f}x | {cand * 1e3:.1f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n\n"
    write_atomic(args.out, header + table + "\n")
    print("\n" + header + table)


if __name__ == "__main__":
    main()
