"""Estimators with answers known in closed form, replay == naive, and the fidelity columns."""

import math

import pytest
import torch
from support import DenseCat, DenseCat1d, MutatingStack, ReplacesInOutput
from torch import nn

import flowprune
from flowprune.score.ablation import ablate
from flowprune.score.engine import Engine
from flowprune.score.taylor import gradient_and_hessian
from flowprune.solve import predict
from flowprune.zoo import ZOO


class Quadratic(nn.Module):
    """y = x + α_f f(x) + α_g g(x): with the loss ‖y − t‖² the loss is exactly quadratic in α."""

    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return x + self.f(x) + self.g(x)


def _quadratic():
    torch.manual_seed(0)
    m = Quadratic().double()
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)

    def loss(out, batch):
        return ((out - t) ** 2).sum()

    with torch.no_grad():
        u, v = m.f(x), m.g(x)
        r = x + u + v - t
    g = torch.stack([2 * (u * r).sum(), 2 * (v * r).sum()])
    H = 2 * torch.stack(
        [torch.stack([(u * u).sum(), (u * v).sum()]), torch.stack([(u * v).sum(), (v * v).sum()])]
    )
    return m, x, loss, g, H


@pytest.mark.parametrize("method", ["autograd", "func"])
def test_gradient_and_hessian_of_a_known_quadratic(method):
    m, x, loss, g_true, H_true = _quadratic()
    graph = flowprune.trace(m, x)
    with Engine(graph, [x], loss, progress=False) as eng:
        assert [c.id for c in eng.candidates] == ["f:branch", "g:branch"]
        g, H = gradient_and_hessian(eng, method=method)
        _, Hd = gradient_and_hessian(eng, hessian="diag")
        base = eng.loss()
        exact_both = eng.loss(["f:branch", "g:branch"]) - base
    assert torch.allclose(g, g_true, atol=1e-10) and torch.allclose(H, H_true, atol=1e-10)
    assert torch.allclose(torch.diagonal(Hd), torch.diagonal(H_true), atol=1e-10)
    assert (
        abs(predict(g, H, [0, 1]) - exact_both) < 1e-9
    )  # quadratic: the prediction is exact, interaction included


def test_hessian_matches_finite_differences_through_layernorm():
    # forward-over-forward gives wrong second derivatives through layer_norm; both methods used here must agree
    # with central differences of the gradient in float64
    torch.manual_seed(0)
    m = ZOO["vit"].build().double()
    x = ZOO["vit"].inputs().double()
    graph = flowprune.trace(m, x)

    def loss(out, batch):
        return out.pow(2).mean()

    with Engine(graph, [x], loss, progress=False) as eng:
        _, H1 = gradient_and_hessian(eng, method="autograd")
        _, H2 = gradient_and_hessian(eng, method="func")
        C, eps = len(eng.candidates), 1e-5
        fd = torch.zeros(C, C, dtype=torch.float64)
        for k in range(C):
            e = torch.zeros(C, dtype=torch.float64)
            e[k] = eps
            gp, _ = gradient_and_hessian(eng, hessian="none", at=1 + e)
            gm, _ = gradient_and_hessian(eng, hessian="none", at=1 - e)
            fd[:, k] = (gp - gm) / (2 * eps)
    assert torch.allclose(H1, H2, atol=1e-8)
    assert torch.allclose(H1, (fd + fd.T) / 2, atol=1e-6, rtol=1e-5)


class ZeroBranch(nn.Module):
    """Three residual branches; the middle one's output is exactly zero."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)) for _ in range(3)
        )
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.blocks[1][2].weight.zero_()
            self.blocks[1][2].bias.zero_()

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_a_zero_branch_scores_zero_everywhere_and_ranks_first():
    torch.manual_seed(0)
    m = ZeroBranch().eval()
    data = [torch.randn(8, 4) for _ in range(3)]
    rep = flowprune.analyze(m, data, criteria=("flow", "loss", "taylor2", "fisher"), progress=False)
    row = {r["id"]: r for r in rep.candidates}["blocks.1:branch"]
    for k in (
        "flow",
        "energy",
        "proximity",
        "llmdrop",
        "angular",
        "loss",
        "kl",
        "spvr",
        "taylor1",
        "taylor2",
        "fisher",
    ):
        assert abs(row[k]) < 1e-12, k
    assert row["rank"] == 1
    for crit in ("loss", "flow", "taylor2"):
        assert min(rep.scores(crit), key=rep.scores(crit).get) == "blocks.1:branch"


def test_energy_share_by_hand():
    torch.manual_seed(0)

    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    m = R()
    x = torch.randn(5, 4)
    rep = flowprune.analyze(m, [x], criteria=("flow",), progress=False)
    with torch.no_grad():
        z = m.fc(x)
        y = x + z
    row = rep.candidates[0]
    assert math.isclose(row["energy"], float((z * z).sum() / (y * y).sum()), rel_tol=1e-5)

    def prox(a):
        return max(0.0, float(y.abs().sum() - (y - a).abs().sum()))

    assert math.isclose(row["proximity"], prox(z) / (prox(z) + prox(x)), rel_tol=1e-5)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1)
    assert math.isclose(row["llmdrop"], float(1 - cos.mean()), rel_tol=1e-5)
    # the only path to the output goes through the add: flow = local energy share among its inputs
    assert math.isclose(
        row["flow"], float((z * z).sum() / ((z * z).sum() + (x * x).sum())), rel_tol=1e-5
    )


def test_concat_input_flow_in_closed_form_and_its_removal():
    """y = cat([x, z]) with z = fc(x): energy ‖z‖²/‖y‖², proximity ‖z‖₁/‖y‖₁, LLM-Drop 1 − mean ‖x_r‖/‖y_r‖;
    removal leaves zeros in z's columns and deletes fc."""
    torch.manual_seed(0)
    m = DenseCat().eval()
    x = torch.randn(6, 4)
    rep = flowprune.analyze(m, [x], criteria=("flow", "loss"), progress=False)
    [row] = rep.candidates
    assert row["id"] == "fc:branch" and row["params"] == 4 * 3 + 3
    with torch.no_grad():
        z = m.fc(x)
        y = torch.cat([x, z], -1)
    assert row["energy"] == pytest.approx(float((z * z).sum() / (y * y).sum()), rel=1e-5)
    assert row["proximity"] == pytest.approx(float(z.abs().sum() / y.abs().sum()), rel=1e-5)
    assert row["llmdrop"] == pytest.approx(
        float(1 - (x.norm(dim=1) / y.norm(dim=1)).mean()), rel=1e-5
    )
    small = flowprune.apply(m, flowprune.trace(m, x).plan(["fc:branch"]))
    with torch.no_grad():
        want = m.head(torch.cat([x, torch.zeros(6, 3)], -1))
        assert torch.allclose(small(x), want, atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in m.parameters()) - 15


@pytest.mark.parametrize("name", ["llama", "resnet_basic", "bert", "falcon", "densenet"])
def test_replayed_ablation_equals_naive(name):
    e = ZOO[name]
    m, x = e.build(), e.inputs()
    graph = flowprune.trace(m, x)
    with Engine(graph, [x, x], "distill", progress=False) as eng:
        a, b = ablate(eng, replay=True), ablate(eng, replay=False)
        base = eng.loss()
        c = ablate(
            eng, replay=True, base_loss=base
        )  # recordings taken in the deepest candidate's pass
        assert set(a) == set(c) == {c.id for c in eng.candidates}
        for cid in a:
            assert (
                abs(a[cid]["loss"] - b[cid]["loss"]) < 1e-6
                and abs(c[cid]["loss"] - b[cid]["loss"]) < 1e-6
            )
            assert c[cid]["kl"] == pytest.approx(b[cid]["kl"], abs=1e-6, nan_ok=True)
        last = eng.candidates[-1].id
        assert abs(a[last]["loss"] - (eng.loss([last]) - base)) < 1e-6


def test_concat_of_channels_in_sequences_uses_per_sample_rows():
    torch.manual_seed(0)
    m = DenseCat1d().eval()
    x = torch.randn(6, 4, 5)
    [row] = flowprune.analyze(m, [x], criteria=("flow",), progress=False).candidates
    with torch.no_grad():
        z = m.conv(x)
        y = torch.cat([x, z], 1)
    assert row["proximity"] == pytest.approx(float(z.abs().sum() / y.abs().sum()), rel=1e-5)
    cos = x.flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    assert row["llmdrop"] == pytest.approx(float(1 - cos.mean()), rel=1e-5)
    assert row["angular"] == pytest.approx(float(torch.arccos(cos).mean() / torch.pi), rel=1e-4)


def test_replay_survives_a_caller_replacing_an_element_of_a_recorded_output():
    torch.manual_seed(0)
    m = ReplacesInOutput().eval()
    xs = [torch.randn(5, 4) for _ in range(2)]
    with Engine(flowprune.trace(m, xs[0]), xs, "distill", progress=False) as eng:
        base = eng.loss()
        a, b = ablate(eng, replay=True, base_loss=base), ablate(eng, replay=False, base_loss=base)
        assert len(a) >= 2
        for cid in a:
            assert a[cid]["loss"] == pytest.approx(b[cid]["loss"], abs=1e-6), cid


def test_replay_survives_in_place_writes_into_recordings():
    """Blocks that write into their (replayed) input: a recording changed in place is dropped, never
    reused, so replay still equals naive ablation, batch after batch."""
    torch.manual_seed(0)
    m = MutatingStack().eval()
    xs = [torch.randn(6, 4) for _ in range(3)]
    graph = flowprune.trace(m, xs[0])
    with Engine(graph, xs, "distill", progress=False) as eng:
        base = eng.loss()
        a, b = ablate(eng, replay=True, base_loss=base), ablate(eng, replay=False, base_loss=base)
        assert len(a) >= 3
        for cid in a:
            assert a[cid]["loss"] == pytest.approx(b[cid]["loss"], abs=1e-6)
            assert a[cid]["loss"] == pytest.approx(eng.loss([cid]) - base, abs=1e-6)


def test_report_fidelity_json_and_markdown(tmp_path):
    e = ZOO["llama"]
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (2, 12), generator=gen)} for _ in range(2)]
    rep = flowprune.analyze(e.build(), data, progress=False)
    assert rep.base_loss == 0.0  # distillation to itself
    assert {
        "loss",
        "flow",
        "taylor2",
        "shortgpt",
        "llmdrop",
        "kl",
        "spvr",
        "magnitude",
        "random",
    } <= set(rep.criteria)
    for crit, v in rep.fidelity.items():
        assert -1 <= v["spearman"] <= 1 and -1 <= v["kendall"] <= 1, crit
    assert rep.fidelity["kl"]["spearman"] == pytest.approx(1.0)  # distill loss == KL
    assert sorted(r["rank"] for r in rep.candidates) == list(range(1, 13))
    path = tmp_path / "report.json"
    rep.to_json(path)
    back = flowprune.Report.from_json(path)
    assert back.candidates == rep.candidates and back.fidelity == rep.fidelity
    md = rep.to_markdown()
    assert "| rank | id | kind |" in md and "Spearman" in md and "model.layers.3:layer" in md
    with pytest.raises(flowprune.PlanError, match="read from JSON"):
        back.plan(flowprune.Budget(count=1))


def test_fisher_of_the_distill_loss_equals_the_gate_hessian_for_a_classifier():
    # at α = 1 the KL's Hessian is exactly the Fisher of the original predictions (Gauss-Newton, p = q)
    e = ZOO["resnet_basic"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rep = flowprune.analyze(e.build(), [x], criteria=("taylor2", "fisher"), progress=False)
    for r in rep.candidates:
        assert r["fisher"] == pytest.approx(r["taylor2"], rel=1e-4, abs=1e-9), r["id"]


def test_kl_and_spvr_ignore_padded_tokens():
    """Right padding of a causal LM: what sits behind the mask changes no ablation column (loss, kl,
    spvr), and the per-token KL is averaged over real tokens only."""

    torch.manual_seed(0)
    m = ZOO["llama"].build()
    ids = torch.randint(0, 128, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    other = ids.clone()
    other[1, 6:] = (other[1, 6:] + 7) % 128  # different garbage behind the padding
    cols = []
    for x in (ids, other):
        batch = {"input_ids": x, "attention_mask": mask, "use_cache": False}
        g = flowprune.trace(m, batch)
        with Engine(g, [batch], "distill", progress=False) as eng:
            eng.references()
            cols.append(ablate(eng, base_loss=eng.loss()))
    for cand_id in cols[0]:
        for k in ("loss", "kl", "spvr"):
            assert cols[0][cand_id][k] == pytest.approx(cols[1][cand_id][k], abs=1e-5), (cand_id, k)
