"""Cost of finding channel groups against one forward, on a 30 M-parameter Llama (8 layers, GQA 8/2).

    OMP_NUM_THREADS=1 python benchmarks/channel_speed.py

Prints a Markdown table: forward time, ``channel_groups(check=False)`` (the label trace, which includes
its own forward, and the grouping) and ``channel_groups()`` with the masked == sliced check (two more
forwards and a copy), each as a ratio to the forward measured in the same run (best of 2).
"""

from __future__ import annotations

import time

import torch
import transformers

from flowprune.channels import channel_groups


def best(fn, n: int = 2) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"Llama, {n / 1e6:.1f} M parameters, {torch.get_num_threads()} thread(s)\n")
    print("| tokens | forward s | groups s | × forward | groups + check s | × forward |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, t in [(2, 128), (8, 512)]:
        x = {"input_ids": torch.randint(0, cfg.vocab_size, (b, t))}
        with torch.no_grad():
            f = best(lambda: model(**x))
        g = best(lambda: channel_groups(model, x, check=False))
        c = best(lambda: channel_groups(model, x), 1)
        print(f"| {b} × {t} | {f:.3f} | {g:.3f} | {g / f:.2f} | {c:.3f} | {c / f:.2f} |")


if __name__ == "__main__":
    main()
