"""LLMs end to end: text data, perplexity, compensation fills, save/load of sublayer plans, generation
with the KV cache after pruning, and the acceptance check on a Llama trained in the test."""

import math

import pytest
import torch
from support import Residual
from transformers import LlamaConfig, LlamaForCausalLM

import flowprune
from flowprune import Budget
from flowprune.data import python_docs, python_docs_text, wikitext
from flowprune.score import perplexity
from flowprune.zoo import ZOO


def byte_tokenizer(text):
    return {"input_ids": list(text.encode("utf-8"))}


def test_python_docs_batches_and_split():
    train, test = python_docs_text("train"), python_docs_text("test")
    assert len(train) > 300_000 and 0.05 < len(test) / (len(train) + len(test)) < 0.15
    assert train[-200:] not in test
    batches = python_docs(byte_tokenizer, seq_len=64, num_samples=20, batch_size=8)
    assert [b["input_ids"].shape for b in batches] == [(8, 64), (8, 64), (4, 64)]
    assert batches[0]["input_ids"].dtype == torch.long


def test_wikitext_offline_names_the_alternatives():
    with pytest.raises(flowprune.InputError, match=r"python_docs.*text_files"):
        wikitext(byte_tokenizer)


def test_perplexity_is_exp_of_the_models_own_loss():
    m = ZOO["llama"].build()
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = m(input_ids=ids, labels=ids).loss
    assert perplexity(m, [{"input_ids": ids}]) == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_linear_fill_recovers_a_linear_branch_and_mean_fill_its_mean():
    torch.manual_seed(0)
    m = Residual(4)
    data = [torch.randn(64, 4) for _ in range(2)]
    g = flowprune.trace(m, data[0])
    lin = flowprune.apply(m, g.plan(["fc:branch"], fill="linear"), data=data)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(
            lin(x), m(x), atol=1e-5
        )  # the branch is linear: least squares is exact
        mean = flowprune.apply(m, g.plan(["fc:branch"], fill="mean"), data=data)
        z = m.fc(torch.cat(data)).mean(0)
        assert torch.allclose(mean(x), x + z, atol=1e-5)
    with pytest.raises(flowprune.PlanError, match="pass data=batches"):
        flowprune.apply(m, g.plan(["fc:branch"], fill="mean"))


@pytest.mark.parametrize("fill", ["zeros", "mean", "linear"])
def test_sublayer_plans_round_trip(fill, tmp_path):
    m = ZOO["llama"].build()
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (4, 16), generator=gen)} for _ in range(2)]
    g = flowprune.trace(m, data[0])
    ids = ["model.layers.0.self_attn:branch", "model.layers.1:layer", "model.layers.3.mlp:branch"]
    small = flowprune.apply(m, g.plan(ids, fill=fill), data=data)
    flowprune.save_pretrained(m, tmp_path / "m")
    flowprune.save_pretrained(
        small, tmp_path / "m", overwrite=True
    )  # a flowprune folder is replaced whole
    assert (tmp_path / "m" / "flowprune.json").exists() and not list(tmp_path.glob(".m*"))
    back = flowprune.load_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(back(**data[1]).logits, small(**data[1]).logits, atol=1e-5)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize(
    "name", ["llama", "qwen2", "gemma2", "phi3", "gpt2", "opt", "gpt_neox", "falcon"]
)
def test_generate_after_pruning_matches_the_gated_model(name):
    e = ZOO[name]
    m = e.build()
    g = flowprune.trace(m, e.inputs())
    branches = [c.id for c in g.candidates("branch")]
    layers = [c.id for c in g.candidates("layer")]
    ids = [
        branches[0],
        layers[1],
    ]  # the first attention (its KV-cache slot) and a middle layer (renumbering)
    small = flowprune.apply(m, g.plan(ids))
    prompt = e.inputs()["input_ids"][:1, :5]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with flowprune.Gates(g) as gates, gates.removed(ids):
        ref = m.generate(prompt, **kw)
    assert torch.equal(small.generate(prompt, **kw), ref)


def _trained_tiny_llama(steps=250, seed=0):
    torch.manual_seed(seed)
    ids = torch.tensor(byte_tokenizer(python_docs_text("train"))["input_ids"])
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    m = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=4e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        s = torch.randint(0, len(ids) - 65, (16,), generator=gen)
        x = torch.stack([ids[i : i + 64] for i in s.tolist()])
        loss = m(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.slow  # trains three models (about 1.5 min on 2 cores)
def test_acceptance_greedy_loss_beats_shortgpt_and_random_on_trained_llamas():
    """Compare what the method optimises (calibration ΔL of the rewritten model), summed over three
    trained models: the trained weights differ with the machine's floating point (thread count, CPU), so
    a margin on one model's held-out perplexity is decided by rounding (greedy 8.626 vs ShortGPT 8.619
    on one machine).  Measured, seeds 0-2, summed ΔL greedy / ShortGPT / random: 1 thread 0.221 /
    0.308 / 1.212, 2 threads 0.226 / 0.251 / 1.104 (per seed greedy ≤ ShortGPT in all six, tied once).
    Asserted: greedy ≤ one_shot per model (by construction), summed greedy ≤ ShortGPT, random ≥ 2×."""
    calib = python_docs(byte_tokenizer, "train", seq_len=64, num_samples=16)
    held = python_docs(byte_tokenizer, "test", seq_len=64, num_samples=32)
    budget = Budget(count=2)  # 25 % of the 8 sublayers
    dl = {k: 0.0 for k in ("greedy", "one_shot", "shortgpt", "random")}
    ppl = {k: 0.0 for k in dl}
    for seed in range(3):
        m = _trained_tiny_llama(seed=seed)
        report = flowprune.analyze(m, calib, criteria=("flow", "loss"), progress=False).restrict(
            "branch"
        )
        one = {}
        for name, crit, strat in (
            ("greedy", "loss", "greedy"),
            ("one_shot", "loss", "one_shot"),
            ("shortgpt", "shortgpt", "one_shot"),
            ("random", "random", "one_shot"),
        ):
            small = flowprune.apply(m, report.plan(budget, criterion=crit, strategy=strat))
            one[name] = report.measure_model(small)
            dl[name] += one[name]
            ppl[name] += perplexity(small, held)
        # by construction: greedy's first pick is one_shot's first pick, its second the best partner
        assert one["greedy"] <= one["one_shot"] + 1e-6, (seed, one)
    assert dl["greedy"] <= dl["shortgpt"] and dl["random"] >= 2 * dl["greedy"], dl
    assert ppl["greedy"] < ppl["random"], ppl


def test_bfloat16_model_end_to_end():
    m = ZOO["llama"].build().to(torch.bfloat16)
    data = [
        {"input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))}
    ]
    rep = flowprune.analyze(m, data, criteria=("flow", "loss", "taylor2"), progress=False)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["taylor2"]) for r in rep.candidates)
    small = flowprune.apply(m, rep.plan(Budget(count=2), fill="linear"), data=data)
    with torch.no_grad():
        out = small(**data[0]).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    zero = flowprune.apply(
        m, rep.plan(Budget(count=2))
    )  # zero fill: the rewrite is what the gates measured
    assert rep.measure_model(zero) == pytest.approx(rep.plans[-1]["measured"], abs=1e-6)
