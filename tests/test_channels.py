"""Channel groups (``flowprune.channels``): on every zoo model, masking random units equals slicing them
away (at the example input and at another input size), the parameter drop equals ``savings``, and the
caller's model is left untouched; groups are found where the architectures put them (counts derived
from the zoo code); closed-form checks on tiny models; unit-gate gradients; ``residual=True``."""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch
from torch import nn

from flowprune._runtime import call_model, eval_mode
from flowprune._tree import tensor_leaves
from flowprune.channels import UnitGates, channel_groups, slice_, slices_for
from flowprune.zoo import ZOO

TOL = 1e-5


# -- helpers ------------------------------------------------------------------------------------------
def outputs(model: nn.Module, inputs) -> list[torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        out = call_model(model, inputs)
    return [o.double() for o in tensor_leaves(out) if o.is_floating_point()]


def assert_close(masked: list[torch.Tensor], sliced: list[torch.Tensor], what: str = "") -> None:
    assert len(masked) == len(sliced), what
    for a, b in zip(masked, sliced):
        assert a.shape == b.shape, what
        scale = max(a.abs().max().item(), 1e-6) if a.numel() else 1.0
        err = (a - b).abs().max().item() if a.numel() else 0.0
        assert err <= TOL * scale, (
            f"{what}: sliced differs from masked by {err:.3g} (scale {scale:.3g})"
        )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_removal(gs, seed: int) -> dict[str, list[int]]:
    """A seeded random proper, non-empty subset of units of every prunable group."""
    rng = random.Random(seed)
    out = {}
    for g in gs.prunable():
        k = rng.randint(1, g.units - 1)
        out[g.id] = sorted(rng.sample(range(g.units), k))
    return out


def masked_and_sliced(model, gs, removed, inputs_list) -> int:
    """Mask ``removed`` with unit gates and slice it from a copy; outputs must agree on every input.
    Returns the parameter drop of the sliced copy."""
    groups = gs.prunable()
    slices, attrs = slices_for(model, groups, removed)
    sliced = slice_(copy.deepcopy(model), slices, attrs)
    for i, inputs in enumerate(inputs_list):
        with UnitGates(model, groups) as gates:
            gates.set(removed, 0.0)
            masked = outputs(model, inputs)
        assert_close(masked, outputs(sliced, inputs), f"input {i}, removed {removed}")
    return n_params(model) - n_params(sliced)


def snapshot(model: nn.Module):
    """Everything of the caller's model that channel_groups / gates / slices_for may not change."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    ids = {k: id(v) for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {}
    hooks = {}
    for path, m in model.named_modules():
        attrs[path] = {
            k: copy.deepcopy(v)
            for k, v in vars(m).items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, type(None)))
        }
        hooks[path] = sum(
            len(getattr(m, h))
            for h in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
            )
        )
    config = model.config.to_dict() if hasattr(model, "config") else None
    return state, ids, attrs, hooks, config, [p.requires_grad for p in model.parameters()]


def assert_untouched(model: nn.Module, before) -> None:
    state, ids, attrs, hooks, config, grads = before
    now = snapshot(model)
    assert now[1] == ids, "parameters/buffers were replaced"
    assert now[0].keys() == state.keys()
    for k, v in state.items():
        assert now[0][k].shape == v.shape and torch.equal(now[0][k], v), k
    assert now[2] == attrs, "module attributes changed"
    assert all(n == 0 for n in now[3].values()), "hooks left on the model"
    assert now[4] == config
    assert now[5] == grads


# -- second inputs, per model -------------------------------------------------------------------------
def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def other_inputs(name: str):
    """An input of another size than the zoo's example (another batch size where the model takes one
    input size only)."""
    e = ZOO[name]
    x = e.inputs()
    if name == "mlp_skip":  # [B, 16] vectors: only the batch size can change
        return torch.randn(5, 16, generator=_gen())
    if name in ("vgg_bn", "vit"):
        # fixed 32x32: vgg_bn flattens 16*8*8 into a Linear, vit has 17 learned positions; other batch
        return torch.randn(3, 3, 32, 32, generator=_gen())
    if name == "lstm_classifier":
        return torch.randint(0, 100, (3, 7), generator=_gen())
    if isinstance(
        x, torch.Tensor
    ):  # resnets, densenet, mobilenetv2: adaptive pooling before the head
        return torch.randn(3, 3, 40, 40, generator=_gen())
    if "pixel_values" in x:
        out = {"pixel_values": torch.randn(3, 3, 40, 40, generator=_gen())}
        if name == "hf_vit":  # learned positions for 32x32: interpolate them
            out["interpolate_pos_encoding"] = True
        return out
    ids = torch.randint(0, 128, (3, 13), generator=_gen())
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # a padded row: the attention-mask path too
    out = {"input_ids": ids, "attention_mask": mask}
    if "use_cache" in x:
        out["use_cache"] = False
    return out


# -- every zoo model -----------------------------------------------------------------------------------
_CACHE: dict[str, tuple] = {}


def _zoo(name: str):
    """(model, example inputs, groups): traced once per model for this module's tests."""
    if name not in _CACHE:
        model = ZOO[name].build()
        x = ZOO[name].inputs()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = snapshot(model)
            gs = channel_groups(model, x)
            assert_untouched(model, before)
        _CACHE[name] = (model, x, gs)
    return _CACHE[name]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_sliced_equals_masked(name):
    model, x, gs = _zoo(name)
    assert gs.failed == {}
    assert gs.prunable(), f"{name}: no prunable group"
    before = snapshot(model)
    inputs = [x, other_inputs(name)]
    for seed in range(3):
        removed = random_removal(gs, seed)
        drop = masked_and_sliced(model, gs, removed, inputs)
        assert drop == gs.savings(removed)[0]
        assert drop > 0
    # one group at a time (seed 3): each group alone is right, not only all together
    for gid, units in random_removal(gs, 3).items():
        drop = masked_and_sliced(model, gs, {gid: units}, inputs[:1])
        assert drop == gs.savings({gid: units})[0], gid
    assert_untouched(model, before)


def test_phi3_heads_are_kept():
    # phi3 splits its fused qkv at config.num_attention_heads * head_dim, read from the config every
    # layer shares: each sliced attention gets its own copy of the config with its head counts
    _, _, gs = _zoo("phi3")
    assert gs.failed == {}
    assert [g.units for g in gs.prunable() if g.kind == "heads"] == [2, 2]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_params_per_unit(name):
    # params_per_unit is what removing any one unit saves (savings of one unit, any unit)
    _, _, gs = _zoo(name)
    for g in gs:
        for u in range(g.units):
            assert gs.savings({g.id: [u]})[0] == g.params_per_unit, (g.id, u)


def _prunable(name: str) -> dict[str, tuple[str, int, int]]:
    _, _, gs = _zoo(name)
    return {g.id: (g.kind, g.units, g.params_per_unit) for g in gs.prunable()}


def test_groups_mlp_skip():
    # 3 pre-norm blocks: the residual stream is under LayerNorm (one unit, not prunable); each block's
    # fc1 neurons (64) are a group: fc1 row (32) + bias (1) + fc2 column (32)
    assert _prunable("mlp_skip") == {
        f"blocks.{i}.fc1:channels": ("channels", 64, 65) for i in range(3)
    }
    _, _, gs = _zoo("mlp_skip")
    assert gs["head:channels"].reason == "reaches the model output"


def test_groups_vit():
    # per block: 4 heads of 8 (qkv rows 3*8*32 + 3*8 bias + proj columns 8*32 = 1048), mlp 64 neurons
    exp = {}
    for i in range(3):
        exp[f"blocks.{i}.attn.qkv:heads"] = ("heads", 4, 1048)
        exp[f"blocks.{i}.mlp.fc1:channels"] = ("channels", 64, 65)
    assert _prunable("vit") == exp


@pytest.mark.parametrize(
    "name, layers, heads_id, bias",
    [
        ("llama", 4, "q_proj", 0),
        ("mistral", 2, "q_proj", 0),
        ("qwen2", 2, "q_proj", 1),
        ("qwen3", 2, "q_proj", 0),
        ("gemma", 2, "q_proj", 0),
        ("gemma2", 2, "q_proj", 0),
    ],
)
def test_groups_gqa_llms(name, layers, heads_id, bias):
    # GQA 4 query / 2 key-value heads, head_dim 8, hidden 32: a unit is one kv head with its 2 query
    # heads: q rows 16*32 + k, v rows 8*32 each + o_proj columns 16*32 (+ q/k/v biases 16+8+8 for qwen2);
    # SwiGLU/GeGLU 64: gate and up rows (32 each) + down column (32)
    exp = {}
    for i in range(layers):
        exp[f"model.layers.{i}.self_attn.{heads_id}:heads"] = ("heads", 2, 1536 + bias * 32)
        exp[f"model.layers.{i}.mlp.gate_proj:channels"] = ("channels", 64, 96)
    assert _prunable(name) == exp
    _, _, gs = _zoo(name)
    g = gs[f"model.layers.0.self_attn.{heads_id}:heads"]
    assert g.width == 16  # o_proj columns per unit: 2 query heads x head_dim 8
    if name == "qwen3":  # q_norm/k_norm (per head_dim, shared by every head) are not sliced
        assert not any("norm" in m.param for m in g.members)


def test_groups_phi3():
    # fused gate_up_proj: 64 neurons (2 rows of 32 + down column 32); fused qkv: 2 kv-groups of
    # 2 query heads (16 rows) + 1 key + 1 value head (8 rows each), o_proj columns 16
    assert _prunable("phi3") == {
        **{f"model.layers.{i}.mlp.gate_up_proj:channels": ("channels", 64, 96) for i in range(2)},
        **{f"model.layers.{i}.self_attn.qkv_proj:heads": ("heads", 2, 1536) for i in range(2)},
    }


@pytest.mark.parametrize(
    "name, attn, mlp, prefix",
    [
        ("bert", "attention.self.query", "intermediate.dense", "encoder.layer"),
        ("roberta", "attention.self.query", "intermediate.dense", "encoder.layer"),
        ("distilbert", "attention.q_lin", "ffn.lin1", "transformer.layer"),
        ("gpt2", "attn.c_attn", "mlp.c_fc", "transformer.h"),
        ("opt", "self_attn.k_proj", "fc1", "model.decoder.layers"),
        ("gpt_neox", "attention.query_key_value", "mlp.dense_h_to_4h", "gpt_neox.layers"),
        ("hf_vit", "attention.q_proj", "mlp.fc1", "layers"),
    ],
)
def test_groups_mha_models(name, attn, mlp, prefix):
    # 2 layers, 4 heads of 8 (no GQA: units = heads): q, k, v rows 8*32 + 8 bias each + output
    # columns 8*32 = 1048; FFN 64 neurons: row 32 + bias + output column 32 = 65
    exp = {}
    for i in range(2):
        exp[f"{prefix}.{i}.{attn}:heads"] = ("heads", 4, 1048)
        exp[f"{prefix}.{i}.{mlp}:channels"] = ("channels", 64, 65)
    assert _prunable(name) == exp


def test_groups_falcon_multi_query():
    # 4 query heads share 1 key/value head: one unit, not prunable; MLP (no biases) 64 neurons
    _, _, gs = _zoo("falcon")
    assert _prunable("falcon") == {
        f"transformer.h.{i}.mlp.dense_h_to_4h:channels": ("channels", 64, 64) for i in range(2)
    }
    g = gs["transformer.h.0.self_attention.query_key_value:heads"]
    assert g.units == 1 and "key/value" in g.reason


def test_groups_resnet_basic():
    # stem + layer1 (identity shortcuts) is one stream of 8; layer2.0's conv2 + downsample + layer2.1's
    # conv2 one stream of 16; each block's conv1 its own group
    p = _prunable("resnet_basic")
    assert {k: v[1] for k, v in p.items()} == {
        "conv1:channels": 8,
        "layer1.0.conv1:channels": 8,
        "layer1.1.conv1:channels": 8,
        "layer2.0.conv1:channels": 16,
        "layer2.0.conv2:channels": 16,
        "layer2.1.conv1:channels": 16,
    }
    # stem stream unit: conv1 row 27 + bn1 (w, b) + per block conv1 column 72, conv2 row 72, bn2 2
    # (layer1.0, layer1.1) + layer2.0.conv1 column 144 + downsample column 16
    assert p["conv1:channels"][2] == 27 + 2 + 2 * (72 + 72 + 2) + 144 + 16
    assert p["layer1.0.conv1:channels"][2] == 72 + 2 + 72


def test_groups_resnet_bottleneck():
    p = _prunable("resnet_bottleneck")
    assert {k: v[1] for k, v in p.items()} == {
        "conv1:channels": 8,
        "layer1.0.conv1:channels": 4,
        "layer1.0.conv2:channels": 4,
        "layer1.0.conv3:channels": 16,  # + layer1.0.downsample + layer1.1.conv3 (identity shortcut)
        "layer1.1.conv1:channels": 4,
        "layer1.1.conv2:channels": 4,
        "layer2.0.conv1:channels": 8,
        "layer2.0.conv2:channels": 8,
        "layer2.0.conv3:channels": 32,
        "layer2.1.conv1:channels": 8,
        "layer2.1.conv2:channels": 8,
    }


def test_groups_vgg_bn():
    p = _prunable("vgg_bn")
    assert {k: v[1] for k, v in p.items()} == {
        "features.0.conv:channels": 8,
        "features.1.conv:channels": 8,
        "features.3.conv:channels": 16,
        "features.4.conv:channels": 16,
        "classifier.1:channels": 32,
    }
    _, _, gs = _zoo("vgg_bn")
    assert gs["features.4.conv:channels"].width == 64  # flatten: 8x8 positions per channel
    # conv row 16*9 + bn (w, b) + 64 columns of classifier.1's 32 rows
    assert p["features.4.conv:channels"][2] == 144 + 2 + 64 * 32


def test_groups_densenet():
    # the concatenated channels stay with the conv that produced them: conv0 (8), per dense layer its
    # bottleneck conv1 (4*growth = 16) and its conv2 (growth 4), the transition conv ((8+12)//2 = 10)
    p = _prunable("densenet")
    exp = {"conv0:channels": 8, "transition.2:channels": 10}
    for b in (1, 2):
        for i in range(3):
            exp[f"block{b}.layers.{i}.conv1:channels"] = 16
            exp[f"block{b}.layers.{i}.conv2:channels"] = 4
    assert {k: v[1] for k, v in p.items()} == exp


def test_groups_mobilenetv2():
    # stem 8 is one stream with block 1's depthwise (couples in/out) and projection (skip); expanded
    # hidden channels (4x) of blocks 2-5 coupled through their depthwise convs; the projection streams
    # 12 (blocks 2+3) and 16 (blocks 4+5); the last 1x1 conv 32
    p = _prunable("mobilenetv2")
    assert {k: v[1] for k, v in p.items()} == {
        "features.0.0:channels": 8,
        "features.2.conv.0.0:channels": 32,
        "features.2.conv.2.0:channels": 12,
        "features.3.conv.0.0:channels": 48,
        "features.4.conv.0.0:channels": 48,
        "features.4.conv.2.0:channels": 16,
        "features.5.conv.0.0:channels": 64,
        "features.6.0:channels": 32,
    }
    # expanded unit of block 2: expand row 8 + bn 2 + depthwise row 9 + bn 2 + projection column 12
    assert p["features.2.conv.0.0:channels"][2] == 8 + 2 + 9 + 2 + 12


def test_groups_lstm_classifier():
    # residual LSTMs: embedding column j, both LSTMs' hidden unit j and input column j are one unit:
    # 100 + 2 * (ih and hh: 64*16 - 60*15 = 124 each, biases 4 + 4) + head column 4
    assert _prunable("lstm_classifier") == {"embed:channels": ("channels", 16, 100 + 2 * 256 + 4)}


def test_groups_hf_cnns():
    assert {k: v[1] for k, v in _prunable("hf_resnet").items()} == {
        "embedder.embedder.convolution:channels": 8,  # + stage 0's identity shortcut stream
        "encoder.stages.0.layers.0.layer.0.convolution:channels": 8,
        "encoder.stages.1.layers.0.layer.0.convolution:channels": 16,
    }
    # ConvNeXt: the stream is under a channels-first LayerNorm; the 4x pointwise neurons are groups
    assert {k: v[1] for k, v in _prunable("hf_convnext").items()} == {
        "encoder.stages.0.layers.0.pwconv1:channels": 32,
        "encoder.stages.0.layers.1.pwconv1:channels": 32,
        "encoder.stages.1.layers.0.pwconv1:channels": 64,
    }


def test_zoo_removal_changes_the_output():
    # the sliced == masked checks are not vacuous: removing units changes what the model computes
    model, x, gs = _zoo("resnet_basic")
    removed = random_removal(gs, 0)
    with UnitGates(model, gs.prunable()) as gates:
        gates.set(removed, 0.0)
        masked = outputs(model, x)
    full = outputs(model, x)
    assert (masked[0] - full[0]).abs().max() > 1e-2 * full[0].abs().max()


# -- closed-form checks on tiny models ------------------------------------------------------------------
def _groups(model, x, **kw):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group may fail the built-in check
        return channel_groups(model, x, **kw)


def _members(g):
    return {(m.param, m.dim): m for m in g.members}


def _check_all_units(model, x, gs, seeds=(0, 1)):
    """sliced == masked for every prunable group, params drop == savings."""
    for seed in seeds:
        removed = random_removal(gs, seed)
        drop = masked_and_sliced(model, gs, removed, [x])
        assert drop == gs.savings(removed)[0]


def test_two_layer_mlp_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    gs = _groups(model, x)
    (g,) = gs.prunable()
    assert (g.id, g.kind, g.units, g.width, g.exact) == ("0:channels", "channels", 3, 1, True)
    assert g.params_per_unit == 4 + 1 + 2
    # weight_ops: 0.weight rows (4 each) at 5 positions + 2.weight columns (2 each) at 5 positions
    assert g.macs_per_unit == 5 * 4 + 5 * 2
    mem = _members(g)
    assert set(mem) == {("0.weight", 0), ("0.bias", 0), ("2.weight", 1)}
    assert mem[("2.weight", 1)].role == "consumer" and mem[("0.weight", 0)].role == "producer"
    assert mem[("0.weight", 0)].index == ((0,), (1,), (2,))
    assert gs["2:channels"].reason == "reaches the model output"
    assert gs.savings({g.id: [0, 2]}) == (14, 60)
    _check_all_units(model, x, gs)
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {g.id: [1]}))
    assert sliced[0].out_features == 2 and sliced[2].in_features == 2
    assert model[0].out_features == 3 and model[0].weight.shape == (3, 4)


def test_conv_bn_relu_conv_has_bn_members():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2)
    model[1].weight.data.uniform_(0.5, 1.5)
    model[1].bias.data.normal_()
    x = torch.randn(2, 3, 8, 8)
    gs = _groups(model, x)
    (g,) = gs.prunable()
    assert g.units == 6
    mem = _members(g)
    for n in ("1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert (n, 0) in mem and mem[(n, 0)].role == "channel"
        assert mem[(n, 0)].index == tuple((i,) for i in range(6))
    assert ("0.weight", 0) in mem and ("0.bias", 0) in mem and ("3.weight", 1) in mem
    # params (buffers not counted): conv row 27 + bias 1 + bn weight, bias 2 + 1x1 column 4
    assert g.params_per_unit == 27 + 1 + 2 + 4
    _check_all_units(model, x, gs)
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {g.id: [0, 4]}))
    assert sliced[1].num_features == 4 and sliced[1].running_var.shape == (4,)
    assert sliced[0].out_channels == 4 and sliced[3].in_channels == 4


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(4, 6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc0(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


def test_residual_couples_producer_and_branch_output():
    torch.manual_seed(0)
    model, x = _Residual(), torch.randn(5, 4)
    gs = _groups(model, x)
    assert {g.id: g.units for g in gs.prunable()} == {"fc0:channels": 6, "fc1:channels": 5}
    mem = _members(gs["fc0:channels"])
    # the stream: fc0 rows, fc2 rows, fc1 and head columns, in one group
    assert {("fc0.weight", 0), ("fc2.weight", 0), ("fc0.bias", 0), ("fc2.bias", 0)} <= set(mem)
    assert {("fc1.weight", 1), ("head.weight", 1)} <= set(mem)
    assert mem[("fc0.weight", 0)].index == mem[("fc2.weight", 0)].index
    assert gs["fc0:channels"].params_per_unit == 5 + 6 + 5 + 3
    _check_all_units(model, x, gs)


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3))


def test_cat_gives_two_groups_with_consumer_offsets():
    torch.manual_seed(0)
    model, x = _Cat(), torch.randn(2, 3, 6, 6)
    gs = _groups(model, x)
    assert {g.id: g.units for g in gs.prunable()} == {"a:channels": 4, "b:channels": 5}
    assert _members(gs["a:channels"])[("c.weight", 1)].index == tuple((i,) for i in range(4))
    assert _members(gs["b:channels"])[("c.weight", 1)].index == tuple((4 + i,) for i in range(5))
    assert gs["b:channels"].params_per_unit == 27 + 1 + 6
    _check_all_units(model, x, gs)
    slices, attrs = slices_for(model, gs, {"a:channels": [1], "b:channels": [0, 4]})
    assert ("c.weight", 1, [0, 2, 3, 5, 6, 7]) in slices


def test_depthwise_couples_input_and_output_channel():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
        nn.Conv2d(6, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    x = torch.randn(2, 3, 5, 5)
    gs = _groups(model, x)
    (g,) = gs.prunable()
    assert g.units == 6
    mem = _members(g)
    assert mem[("0.weight", 0)].index == mem[("2.weight", 0)].index == tuple((i,) for i in range(6))
    assert ("4.weight", 1) in mem and ("2.bias", 0) in mem
    assert g.params_per_unit == 3 + 1 + 9 + 1 + 4
    _check_all_units(model, x, gs)
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {g.id: [0, 1, 5]}))
    assert sliced[2].groups == 3 and sliced[2].in_channels == 3 and sliced[2].out_channels == 3


def test_grouped_conv_joins_each_group():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(4, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    x = torch.randn(2, 3, 5, 5)
    gs = _groups(model, x)
    (g,) = gs.prunable()
    # a unit: one convolution group (4 input channels, 2 output channels)
    assert g.units == 2
    mem = _members(g)
    assert mem[("0.weight", 0)].index == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert mem[("2.weight", 0)].index == ((0, 1), (2, 3))
    _check_all_units(model, x, gs, seeds=(0,))
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {g.id: [1]}))
    assert sliced[2].groups == 1 and sliced[2].in_channels == 4 and sliced[2].out_channels == 2


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.emb(ids))))


def test_tied_embedding_and_head_couple():
    torch.manual_seed(0)
    model, ids = _Tied(), torch.randint(0, 10, (2, 5))
    gs = channel_groups(model, ids, check=False)
    # emb's channel j and the head's input column j are one weight column: fc's output channel j is
    # coupled to emb's channel j (one group of 8), the vocab rows reach the output
    assert gs["emb:channels"].reason == "reaches the model output"
    g = gs["fc:channels"]  # emb's column is consumed by the head too: fc is the group's producer
    assert g.prunable and g.units == 8
    mem = _members(g)
    assert set(mem) == {("emb.weight", 1), ("fc.weight", 0), ("fc.weight", 1), ("fc.bias", 0)}
    # the tied column is counted once: emb/head column 10 + fc row 8 + fc column 8 - overlap 1 + bias 1
    assert g.params_per_unit == 10 + 8 + 8 - 1 + 1
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {g.id: [2, 3]}))
    assert sliced.head.weight is sliced.emb.weight and sliced.emb.weight.shape == (10, 6)
    assert sliced.emb.embedding_dim == 6 and sliced.head.in_features == 6
    assert n_params(model) - n_params(sliced) == gs.savings({g.id: [2, 3]})[0]
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (10, 8)


def test_tied_group_masks_like_slicing():
    torch.manual_seed(0)
    model, ids = _Tied(), torch.randint(0, 10, (2, 5))
    gs = _groups(model, ids)  # warnings are errors: the check must keep the group
    assert [g.id for g in gs.prunable()] == ["fc:channels"]
    _check_all_units(model, ids, gs)


class _Unruled(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.w = nn.Parameter(torch.randn(6, 6))
        self.fc3 = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = self.fc2(h)
        if self.op == "fft":
            h = torch.fft.fft(h).real
        else:
            h = torch.einsum("bi,ij->bj", h, self.w)
        return self.fc3(h)


@pytest.mark.parametrize("op", ["fft", "einsum"])
def test_op_without_rule_makes_group_unprunable(op):
    torch.manual_seed(0)
    model, x = _Unruled(op), torch.randn(3, 4)
    gs = _groups(model, x)
    g = gs["fc2:channels"]
    assert not g.prunable and op in g.reason
    # fc1's neurons never meet the op: still prunable
    assert [g.id for g in gs.prunable()] == ["fc1:channels"]
    _check_all_units(model, x, gs)


def test_channels_reaching_the_output_are_not_prunable():
    torch.manual_seed(0)

    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 5)
            self.fc2 = nn.Linear(5, 3)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(torch.relu(h)), h  # fc1's channels are also returned

    gs = _groups(TwoOut(), torch.randn(2, 4))
    assert gs.prunable() == []
    assert gs["fc1:channels"].reason == gs["fc2:channels"].reason == "reaches the model output"


# -- unit gates ---------------------------------------------------------------------------------------
def _small_mlp64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 3))
    return model.double().eval(), torch.randn(7, 4, dtype=torch.float64)


def test_unit_gate_gradient_matches_finite_difference():
    model, x = _small_mlp64()
    gs = _groups(model, x)
    assert [g.units for g in gs.prunable()] == [5, 6]
    gates = UnitGates(model, gs.prunable())
    base = torch.linspace(0.3, 1.2, gates.alpha.numel(), dtype=torch.float64)

    def loss(alpha):
        gates.alpha = alpha
        with gates:
            return (model(x) ** 2).sum()

    a = base.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(a), a)
    eps = 1e-6
    fd = torch.zeros_like(base)
    with torch.no_grad():
        for i in range(base.numel()):
            up, down = base.clone(), base.clone()
            up[i] += eps
            down[i] -= eps
            fd[i] = (loss(up) - loss(down)) / (2 * eps)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8), (grad, fd)
    assert gates.offsets == {"0:channels": 0, "2:channels": 5}
    assert all(len(m._forward_hooks) == len(m._forward_pre_hooks) == 0 for m in model.modules())


def test_alpha_zero_is_slicing():
    model, x = _small_mlp64()
    gs = _groups(model, x)
    before = snapshot(model)
    for gid, units in [("0:channels", [3]), ("2:channels", [0, 5]), ("0:channels", [0, 1, 2, 4])]:
        with UnitGates(model, gs.prunable()) as gates:
            gates.set({gid: units}, 0.0)
            o = gates.offsets[gid]
            assert gates.alpha[[o + u for u in units]].eq(0).all()
            assert gates.alpha.sum() == gates.alpha.numel() - len(units)
            masked = model(x)
        sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, {gid: units}))
        assert torch.allclose(masked, sliced(x), rtol=1e-12, atol=1e-12)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match="zero-width"):
        slices_for(model, gs, {"0:channels": range(5)})


# -- residual=True --------------------------------------------------------------------------------------
def test_residual_width_group_under_prenorm():
    model, x = ZOO["mlp_skip"].build(), ZOO["mlp_skip"].inputs()
    gs = channel_groups(model, x, residual=True)
    width = [g for g in gs if g.kind == "width"]
    assert len(width) == 1
    (g,) = width
    assert g.exact is False and g.prunable and g.units == 32
    mem = _members(g)
    # the stream: fc_in rows, every block's norm (weight, bias) and fc2 rows, fc1 and head columns
    assert ("fc_in.weight", 0) in mem and ("head.weight", 1) in mem
    for i in range(3):
        assert {(f"blocks.{i}.fc2.weight", 0), (f"blocks.{i}.fc1.weight", 1)} <= set(mem)
        assert {(f"blocks.{i}.norm.weight", 0), (f"blocks.{i}.norm.bias", 0)} <= set(mem)
    # the MLP neurons are unchanged and exact
    assert {x.id: x.units for x in gs if x.kind == "channels" and x.prunable} == {
        f"blocks.{i}.fc1:channels": 64 for i in range(3)
    }
    assert all(x.exact for x in gs if x.kind != "width")
    # slicing the width runs and drops what savings says (not equal to masking: the norm's statistics)
    removed = {g.id: [0, 7, 31]}
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, removed))
    assert n_params(model) - n_params(sliced) == gs.savings(removed)[0]
    assert sliced(x).shape == (2, 10) and sliced.blocks[0].norm.normalized_shape == (29,)


def test_model_in_train_mode_is_untouched():
    # tracing, the built-in check and the gates run in eval mode: BatchNorm statistics and every
    # module's training flag are left as they were
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(6, 4, 1),
        nn.Flatten(1),
    ).train()
    x = torch.randn(2, 3, 6, 6)
    before = snapshot(model)
    gs = channel_groups(model, x)
    with UnitGates(model, gs.prunable()) as gates:
        gates.set({"0:channels": [1]}, 0.0)
    slices_for(model, gs, {"0:channels": [1]})
    assert_untouched(model, before)
    assert model.training and model[1].training


@pytest.mark.parametrize(
    "name",
    [
        "llama",
        "gpt2",
        "vit",
        "hf_convnext",
    ],
)  # fmt: skip
def test_residual_width_slices_on_zoo(name):
    # a width group of the residual stream slices into a model that runs, with the predicted param drop
    model, x = ZOO[name].build(), ZOO[name].inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = channel_groups(model, x, residual=True)
    width = [g for g in gs.prunable() if g.kind == "width"]
    assert len(width) == 1 and not width[0].exact
    removed = {width[0].id: [0, 5, width[0].units - 1]}
    sliced = slice_(copy.deepcopy(model), *slices_for(model, gs, removed))
    assert n_params(model) - n_params(sliced) == gs.savings(removed)[0]
    outputs(sliced, x)
    outputs(sliced, other_inputs(name))


def test_a_rule_that_fails_keeps_the_channels_and_names_the_op(monkeypatch):
    # a rule raising (an op called in a form it does not expect) never breaks the trace
    from flowprune.channels import rules

    def broken(*a, **k):
        raise ValueError("unexpected form")

    monkeypatch.setitem(rules.HANDLERS, "relu", broken)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    gs = channel_groups(model, torch.randn(2, 4))
    (g,) = [g for g in gs if g.id == "0:channels"]
    assert not g.prunable and "relu" in g.reason and "rule failed" in g.reason


class _FrozenBN(nn.Module):
    """BatchNorm as buffer arithmetic (DETR-style backbones): scale = w·rsqrt(var), shift = b − mean·scale."""

    def __init__(self, c):
        super().__init__()
        for n, v in [("weight", 1.5), ("bias", 0.1), ("running_mean", 0.2), ("running_var", 0.7)]:
            self.register_buffer(n, torch.linspace(v, 2 * v, c))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def test_frozen_batchnorm_buffers_are_sliced_with_their_channel():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), _FrozenBN(8), nn.ReLU(), nn.Conv2d(8, 4, 3)
    )
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    gs = _groups(model, x)  # warnings are errors: the check keeps the group
    g = gs["0:channels"]
    assert {m.param for m in g.members if m.role == "channel"} == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    }
    _check_all_units(model, x, gs)
