"""Train the tiny causal LM that flowprune ships in data/tiny-llama-pydocs (the `flowprune prune` default).

    python scripts/train_tiny_lm.py                 # ~4 min on 2 CPU cores; rewrites data/tiny-llama-pydocs

Reproducible: a byte-level BPE tokenizer (vocab 2048) and a 6-layer Llama (hidden 128, GQA 4q/2kv,
SwiGLU 384, tied embeddings, ~1.4 M parameters) trained from seed 0 with AdamW on the train split (first
90 %) of CPython's documentation (``pydoc_data.topics``); the last 10 % is held out for evaluation.  The
corpus is small (~150 k tokens), so the last 5 % of the train split validates every 100 steps and the
best checkpoint is kept (early stopping).  Same torch version and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from flowprune.data import python_docs, python_docs_text
from flowprune.score import perplexity

OUT = Path(__file__).resolve().parents[1] / "data" / "tiny-llama-pydocs"


def train_tokenizer(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    tok = train_tokenizer(python_docs_text("train"), 2048)
    all_ids = torch.tensor(tok(python_docs_text("train"))["input_ids"])
    cut = int(len(all_ids) * 0.95)
    ids, val_ids = all_ids[:cut], all_ids[cut:]
    val = [
        {"input_ids": val_ids[i : i + 128 * 8].view(8, 128)}
        for i in range(0, len(val_ids) - 128 * 8, 128 * 8)
    ]
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / 100)
            * 0.5
            * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
        ),
    )
    gen = torch.Generator().manual_seed(0)
    seq, batch = 128, 16
    best, best_state = float("inf"), None
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 99 or step == args.steps - 1:
            v = perplexity(model, val)
            model.train()
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in model.state_dict().items()}
            print(
                f"step {step + 1:5d}  loss {loss.item():.3f}  validation ppl {v:.2f}  "
                f"{time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    model.load_state_dict(best_state)
    model.eval()
    ppl = perplexity(model, python_docs(tok, split="test", seq_len=128, num_samples=64))
    print(
        f"held-out perplexity {ppl:.2f}; {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{time.perf_counter() - t0:.0f}s"
    )
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=".tiny-lm-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "TRAINING.json").write_text(
        json.dumps(
            {
                "steps": args.steps,
                "seq_len": seq,
                "batch": batch,
                "validation_perplexity": round(best, 3),
                "heldout_perplexity": round(ppl, 3),
                "torch": torch.__version__,
            },
            indent=1,
        )
    )
    tmp.chmod(0o755)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
