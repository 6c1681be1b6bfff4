"""Budgets, solvers, prune(), and the data formats analyze accepts."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import flowprune
from flowprune import Budget
from flowprune.zoo import ZOO


def _llama_data(n=2):
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 128, (2, 12), generator=gen)} for _ in range(n)]


@pytest.fixture(scope="module")
def report():
    return flowprune.analyze(ZOO["llama"].build(), _llama_data(), progress=False)


def test_greedy_with_count_one_is_the_best_single_ablation(report):
    best = min(report.scores("loss").items(), key=lambda kv: kv[1])
    plan = report.plan(Budget(count=1), strategy="greedy")
    assert [r.id for r in plan.removals] == [best[0]]
    assert report.plans[-1]["measured"] == pytest.approx(best[1], abs=1e-6)


def test_budgets_are_met(report):
    total = report.data["total_params"]
    p = report.plan(Budget(params=0.25), criterion="flow", strategy="one_shot")
    assert p.params_removed >= 0.25 * total
    f = report.plan(Budget(flops=0.3), criterion="taylor2", strategy="one_shot")
    assert f.flops_removed >= 0.3 * report.data["total_flops"]
    ceiling = sorted(report.scores("loss").values())[2]
    report.plan(Budget(max_loss_increase=ceiling), criterion="loss", strategy="one_shot")
    assert 0 < report.plans[-1]["measured"] <= ceiling
    g = report.plan(Budget(max_loss_increase=ceiling), strategy="greedy")
    assert report.plans[-1]["measured"] <= ceiling and len(g.removals) >= 1


def _overlap(a, b):
    pa, pb = a.split(":")[0], b.split(":")[0]
    return pa == pb or pa.startswith(pb + ".") or pb.startswith(pa + ".")


def test_quadratic_finds_the_best_predicted_set_and_measures_it(report):
    import itertools

    ids_all = [r["id"] for r in report.candidates]
    for k in (2, 3):
        plan = report.plan(Budget(count=k), strategy="quadratic")
        ids = [r.id for r in plan.removals]
        assert not any(
            _overlap(a, b) for a, b in itertools.combinations(ids, 2)
        )  # no layer + its branch
        best = min(
            report.predict(list(c))
            for c in itertools.combinations(ids_all, k)
            if not any(_overlap(a, b) for a, b in itertools.combinations(c, 2))
        )
        assert report.predict(ids) == pytest.approx(
            best, abs=1e-12
        )  # brute force over all valid sets
        rec = report.plans[-1]
        assert rec["predicted"] == pytest.approx(best)
        assert rec["measured"] == pytest.approx(report.measure(ids), abs=1e-9)


def test_prune_returns_a_smaller_model_whose_loss_change_is_the_reports():
    model = ZOO["llama"].build()
    n0 = sum(p.numel() for p in model.parameters())
    small, rep = flowprune.prune(model, _llama_data(), Budget(count=3), progress=False)
    last = rep.plans[-1]
    assert n0 - sum(p.numel() for p in small.parameters()) == last["params_removed"] > 0
    assert last["measured_rewritten"] == pytest.approx(last["measured"], abs=1e-6)
    assert last["predicted"] == pytest.approx(last["measured"], abs=1e-9)  # greedy scores exactly
    assert sum(p.numel() for p in model.parameters()) == n0  # the argument is untouched


def test_classifier_with_labels_dataloader_and_ce():
    model = ZOO["resnet_basic"].build()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 32, 32, generator=gen), torch.randint(0, 10, (12,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    rep = flowprune.analyze(
        model, loader, loss="ce", criteria=("loss",), num_samples=10, progress=False
    )
    assert rep.data["num_samples"] == 10
    with torch.no_grad():
        logits = model(x[:10])
    assert rep.base_loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y[:10])), rel=1e-5
    )
    assert rep.fidelity["spvr"]["spearman"] > 0


def test_datasets_dataset_with_lm_loss():
    datasets = pytest.importorskip("datasets")
    gen = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict(
        {"input_ids": torch.randint(0, 128, (6, 10), generator=gen).tolist(), "text": ["x"] * 6}
    )
    rep = flowprune.analyze(ZOO["gpt2"].build(), ds, loss="lm", criteria=("loss",), progress=False)
    assert rep.data["num_samples"] == 6 and rep.base_loss > 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(), "exactly one"),
        (dict(count=1, params=0.1), "exactly one"),
        (dict(params=25), r"fraction in \(0, 1\]"),
    ],
)
def test_bad_budgets(bad, match):
    with pytest.raises(flowprune.InputError, match=match):
        Budget(**bad)


def test_bad_analyze_arguments():
    m = ZOO["mlp_skip"].build()
    x = ZOO["mlp_skip"].inputs()
    with pytest.raises(flowprune.InputError, match="unknown criteria"):
        flowprune.analyze(m, [x], criteria=("flw",))
    with pytest.raises(flowprune.InputError, match="needs labels"):
        flowprune.analyze(m, [x], loss="ce", criteria=("loss",), progress=False)
    with pytest.raises(flowprune.InputError, match="unknown loss"):
        flowprune.analyze(m, [x], loss="mse", progress=False)


def test_model_without_candidates_and_tokenizer_style_batches():
    from transformers import BatchEncoding

    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    rep = flowprune.analyze(plain, [torch.randn(5, 4)], progress=False)
    assert rep.candidates == [] and rep.data["g"] == []
    batch = BatchEncoding(
        {"input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))}
    )
    rep = flowprune.analyze(ZOO["gpt2"].build(), [batch], criteria=("loss",), progress=False)
    assert len(rep.candidates) == 6


def test_analyze_leaves_the_model_as_it_was():
    model = ZOO["resnet_basic"].build().train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    hooks = {
        n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()
    }
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rep = flowprune.analyze(
        model, [x], criteria=("flow", "loss", "taylor2", "fisher"), progress=False
    )
    rep.plan(Budget(count=2), strategy="greedy")
    assert all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert {
        n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()
    } == hooks
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
