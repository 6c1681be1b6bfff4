"""Compensation fills that fit the layer (a 1×1 conv over channels, a Linear over D), their parameter
accounting and refusals; mask-aware distill losses; loss callables that take the original model's output."""

import functools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from support import Residual
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

import flowprune
from flowprune import Budget
from flowprune.plan import signed
from flowprune.report.tables import plans as plan_table
from flowprune.rewrite.fill import fit_fills
from flowprune.score.losses import distill_loss, takes_reference
from flowprune.zoo import ZOO


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _resnet():
    """zoo ResNet whose last BatchNorm of the first block scales and shifts each channel differently, so
    a map over the width (the old fill) cannot stand for it while a map over channels can exactly."""
    e = ZOO["resnet_basic"]
    m = e.build().eval()
    bn = m.layer1[0].bn2
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=gen))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    data = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(2)]
    return m, e.inputs(), data


BRANCH = "layer1.0.bn2:branch"


def test_linear_fill_on_a_conv_branch_is_a_1x1_conv_over_channels():
    m, x, data = _resnet()
    g = flowprune.trace(m, x)
    C = m.layer1[0].bn2.num_features
    with pytest.warns(UserWarning, match=r"fill='linear' adds .* grows the model by"):
        plan = g.plan([BRANCH], fill="linear")
    rep = plan.replacements[0]
    assert rep.mode == "linear" and rep.shape == [
        C,
        C,
        1,
    ]  # [in channels, out channels, channel dim]
    small = flowprune.apply(m, plan, data=data)
    stub = small.layer1[0].bn2
    assert n_params(stub) == C * (C + 1)  # C_out * (C_in + 1)
    # the parameter drop of the rewrite is what the plan counted (negative: BN's 2C < C(C+1))
    assert n_params(m) - n_params(small) == plan.params_removed == 2 * C - C * (C + 1)
    assert "+" in str(plan) and "--" not in str(plan)
    y = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the gated model (branch output zeroed) plus the fitted fill applied as a 1×1 convolution
        w, b = stub.linear.weight[:, :, None, None], stub.linear.bias
        with flowprune.Gates(g) as gates, gates.removed([BRANCH]):
            # registered after the gate's hook, so it runs on the gated (zero) output
            hook = m.layer1[0].bn2.register_forward_hook(
                lambda mod, args, out: out + F.conv2d(args[0], w, b)
            )
            try:
                ref = m(y)
            finally:
                hook.remove()
        assert torch.allclose(small(y), ref, atol=1e-5)
        # eval BatchNorm is affine per channel: least squares over channels recovers it (a width map cannot)
        assert torch.allclose(small(y), m(y), atol=1e-3)


def test_mean_fill_on_a_conv_branch_is_per_channel():
    m, x, data = _resnet()
    g = flowprune.trace(m, x)
    C = m.layer1[0].bn2.num_features
    plan = g.plan([BRANCH], fill="mean")
    assert plan.replacements[0].shape == [1, C, 1, 1]
    small = flowprune.apply(m, plan, data=data)
    assert n_params(m) - n_params(small) == plan.params_removed > 0
    seen = []
    hook = m.layer1[0].bn2.register_forward_hook(
        lambda mod, args, out: seen.append(out.clone())
    )  # `out += identity` follows
    with torch.no_grad():
        for b in data:
            m(b)
    hook.remove()
    expected = torch.cat(seen).mean((0, 2, 3)).reshape(1, C, 1, 1)
    assert torch.allclose(small.layer1[0].bn2.fill, expected, atol=1e-5)


class _Conv1dResidual(nn.Module):
    """x + conv(x) on [B, C, L]: a pointwise Conv1d is linear over channels (dim 1 of a rank-3 tensor)."""

    def __init__(self):
        super().__init__()
        self.f = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return x + self.f(x)


@pytest.mark.parametrize(
    "model, shape, dim", [(Residual(4), (8, 5, 4), -1), (_Conv1dResidual(), (8, 4, 5), 1)]
)
def test_linear_fill_channel_dim_follows_the_module_type(model, shape, dim):
    torch.manual_seed(0)
    data = [torch.randn(*shape) for _ in range(2)]
    name = next(n for n, _ in model.named_children())
    g = flowprune.trace(model, data[0])
    plan = g.plan([f"{name}:branch"], fill="linear")
    assert plan.replacements[0].shape == [4, 4, dim]
    small = flowprune.apply(model, plan, data=data)
    assert (
        n_params(model) - n_params(small) == plan.params_removed == 0
    )  # 4×4 + 4 replaced by 4×4 + 4
    x = torch.randn(3, *shape[1:])
    with torch.no_grad():
        assert torch.allclose(
            small(x), model(x), atol=1e-5
        )  # the branch is linear: the fit is exact


@pytest.mark.parametrize(
    "name, dim", [("hf_convnext", -1), ("mobilenetv2", 1), ("lstm_classifier", -1), ("gpt2", -1)]
)
def test_linear_fill_parameters_are_counted_exactly(name, dim):
    """ConvNeXt's pwconv2 is a Linear on [B, H, W, C] (channels last by module type); MobileNetV2 a conv
    block; an LSTM and GPT-2's attention map [B, T, D].  The plan's count is the rewrite's drop."""
    e = ZOO[name]
    m, x = e.build().eval(), e.inputs()
    g = flowprune.trace(m, x)
    c = g.candidates("branch")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of these fills add more than they remove
        plan = g.plan([c.id], fill="linear")
    c_in, c_out, d = plan.fills[0].shape
    assert d == dim
    small = flowprune.apply(m, plan, data=[x])
    stub = small.get_submodule(c.path)
    assert n_params(stub) == c_out * (c_in + 1)
    assert n_params(m) - n_params(small) == plan.params_removed


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 1))

    def forward(self, x):
        return x * self.w


class _Ambiguous(nn.Module):
    """[B, 4, 6] through a module of unknown type: [B, T, D] or [B, C, L] cannot be told."""

    def __init__(self):
        super().__init__()
        self.f = _Scale()

    def forward(self, x):
        return x + self.f(x)


class _Strided(nn.Module):
    """The branch module maps [B, 4, 4, 4] to [B, 4, 8, 8]: no position-wise map between them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)

    def forward(self, x):
        return x + self.up(self.conv(x))


@pytest.mark.parametrize(
    "model, x, cid, why",
    [
        (_Ambiguous(), torch.randn(2, 4, 6), "f:branch", "channel dim cannot be told"),
        (_Strided(), torch.randn(2, 4, 8, 8), "up:branch", "differ"),
    ],
)
def test_linear_fill_refuses_layouts_it_cannot_map(model, x, cid, why):
    g = flowprune.trace(model, x)
    with pytest.raises(flowprune.PlanError, match=rf"{cid}.*{why}.*fill='mean'"):
        g.plan([cid], fill="linear")
    g.plan([cid], fill="mean")  # a constant fits any layout


@pytest.mark.parametrize("fill", ["mean", "linear"])
def test_fills_reject_non_finite_statistics(fill):
    m = Residual(4)
    with torch.no_grad():
        m.fc.weight.fill_(10.0)
    bad = torch.randn(8, 4)
    bad[3] = 3e38  # finite data (apply checks that) whose branch output overflows to inf in float32
    data = [torch.randn(8, 4), bad, torch.randn(8, 4)]
    plan = flowprune.trace(m, data[0]).plan(["fc:branch"], fill=fill)
    with pytest.raises(flowprune.InputError, match=r"'fc'.*batch 1"):
        fit_fills(m, plan, data)
    with pytest.raises(flowprune.InputError, match=r"'fc'.*batch 1"):
        flowprune.apply(m, plan, data=data)


def test_signed_changes_in_plans_and_tables():
    assert [signed(1234), signed(-1234), signed(94, 1000), signed(-94, 1000)] == [
        "-1,234",
        "+1,234",
        "-9.4%",
        "+9.4%",
    ]
    d = {
        "total_params": 1000,
        "total_flops": 100,
        "plans": [
            {
                "strategy": "greedy",
                "criterion": "loss",
                "fill": "linear",
                "removals": ["a"],
                "params_removed": -94,
                "flops_removed": 5,
            }
        ],
    }
    row = plan_table(d)[1][0]
    assert row[4] == "1,000 → 1,094 (+9.4%)" and row[5] == "100 → 95 (−5.0%)"


# -- losses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
@pytest.mark.parametrize("kind", ["hidden", "logits"])
def test_distill_ignores_padded_tokens(kind, mask):
    gen = torch.Generator().manual_seed(0)
    h, h_ref = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    keep = torch.tensor(mask, dtype=torch.bool)
    h[1, ~keep] = 1e4 * torch.randn(int((~keep).sum()), 8, generator=gen)  # garbage at the padding
    wrap = (lambda t: BaseModelOutput(last_hidden_state=t)) if kind == "hidden" else (lambda t: t)
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 5, mask]),
    }
    got = distill_loss(wrap(h), batch, wrap(h_ref))
    assert got.shape == (2,)
    alone = [
        distill_loss(
            wrap(h[i : i + 1, k]),
            {"input_ids": torch.zeros(1, int(k.sum()), dtype=torch.long)},
            wrap(h_ref[i : i + 1, k]),
        )[0]
        for i, k in enumerate([torch.ones(5, dtype=torch.bool), keep])
    ]
    assert torch.allclose(got, torch.stack(alone), atol=1e-6, rtol=0)


def _bert_batches(pad_fill: int):
    """One padded BERT batch (sample 1 has 3 real tokens); ``pad_fill``: the token id at padded positions."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (3, 8), generator=gen)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 3:] = 0
    ids[1, 3:] = pad_fill
    return [{"input_ids": ids, "attention_mask": mask}]


def test_distill_on_an_encoder_does_not_see_what_is_behind_the_padding():
    m = ZOO["bert"].build().eval()
    a = flowprune.analyze(m, _bert_batches(0), criteria=("loss",), progress=False)
    b = flowprune.analyze(m, _bert_batches(77), criteria=("loss",), progress=False)
    la, lb = [r["loss"] for r in a.candidates], [r["loss"] for r in b.candidates]
    assert all(v > 0 for v in la)
    assert la == pytest.approx(lb, abs=1e-6, rel=0)


def embedding_loss(out, batch, reference):
    """1 − cos of mask-aware mean-pooled sentence embeddings to the original model's."""
    assert not reference.last_hidden_state.requires_grad  # gradients flow through `out` only
    mask = batch["attention_mask"][..., None].float()  # [B, T, 1]

    def pool(h):
        return (h * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B, T, D] -> [B, D]

    return (
        1
        - torch.cosine_similarity(
            pool(out.last_hidden_state), pool(reference.last_hidden_state), dim=-1
        )
    ).mean()


def test_takes_reference_reads_the_signature():
    class Call:
        def __call__(self, out, batch, reference):
            return 0

    assert takes_reference(lambda out, batch: 0) is None
    assert takes_reference(lambda out, batch, scale=1.0: 0) is None
    assert takes_reference(lambda out, batch, ref: 0) == "positional"
    assert takes_reference(embedding_loss) == "keyword"
    assert takes_reference(lambda out, batch, *, reference: 0) == "keyword"
    assert takes_reference(Call()) == "keyword"

    class Loss(nn.Module):
        def forward(self, out, batch, ref):
            return 0

    assert takes_reference(Loss()) == "positional"
    assert takes_reference(functools.partial(lambda w, out, batch, ref: 0, 1.0)) == "positional"


def test_a_loss_taking_the_reference_drives_ablation_taylor_and_greedy_on_an_encoder():
    m = ZOO["bert"].build().eval()
    data = _bert_batches(0)
    rep = flowprune.analyze(
        m, data, loss=embedding_loss, criteria=("loss", "taylor2"), progress=False
    )
    assert abs(rep.base_loss) < 1e-6  # α = 1: the output is the reference
    assert all(r["loss"] > 0 for r in rep.candidates)  # removing anything moves the embeddings
    assert all(math.isfinite(r["taylor2"]) for r in rep.candidates)
    plan = rep.plan(Budget(count=1), strategy="greedy")
    best = min(rep.candidates, key=lambda r: r["loss"])
    assert plan.paths == [best["path"]] and rep.plans[-1]["measured"] == pytest.approx(
        best["loss"], abs=1e-6
    )
    # keyword form, and a 3-argument callable that is the built-in distill: the reference is the original output
    kw = flowprune.analyze(
        m,
        data,
        loss=lambda out, batch, *, reference: embedding_loss(out, batch, reference),
        criteria=("loss",),
        progress=False,
    )
    assert [r["loss"] for r in kw.candidates] == pytest.approx(
        [r["loss"] for r in rep.candidates], abs=1e-7
    )
    same = flowprune.analyze(
        m,
        data,
        loss=lambda out, batch, ref: distill_loss(out, batch, ref).mean(),
        criteria=("loss",),
        progress=False,
    )
    builtin = flowprune.analyze(m, data, loss="distill", criteria=("loss",), progress=False)
    assert [r["loss"] for r in same.candidates] == pytest.approx(
        [r["loss"] for r in builtin.candidates], abs=1e-6
    )
