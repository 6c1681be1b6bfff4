"""Architectures outside the zoo: torch's own TransformerEncoder (its fused fast path reads the children a
rewrite replaces), a state-space model, ALiBi attention, and wrapped models (torch.compile, DataParallel)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import flowprune
from flowprune._tree import tensor_leaves
from flowprune.errors import InputError
from flowprune.graph.trace import call_model, unwrap
from flowprune.rewrite.shadow import RemovedTensor


def _out(model: nn.Module, x: Any) -> list[torch.Tensor]:
    with torch.no_grad():  # no_grad: nn.TransformerEncoderLayer takes its fused fast path only then
        return [t for t in tensor_leaves(call_model(model, x)) if t.is_floating_point()]


def _assert_rewrites_equal(
    model: nn.Module, x: Any, train: bool = False, min_candidates: int = 1
) -> list[str]:
    """Every single-candidate rewrite equals the gated model on ``x`` (in train mode if ``train``)."""
    graph = flowprune.trace(model, x)
    cands = graph.candidates()
    assert len(cands) >= min_candidates
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a candidate dropped by the self-check would warn
        gates = flowprune.Gates(graph).__enter__()
    try:
        for c in cands:
            small = flowprune.apply(model, graph.plan([c.id]))
            model.train(train)
            small.train(train)
            with gates.removed([c.id]):
                ref = _out(model, x)
            got = _out(small, x)
            model.eval()
            assert len(ref) == len(got), c.id
            for a, b in zip(ref, got):
                assert (a - b).abs().max().item() <= 1e-5, c.id
    finally:
        gates.__exit__(None, None, None)
    return [c.id for c in cands]


def _encoder(norm_first: bool, batch_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.0, batch_first=batch_first, norm_first=norm_first
    )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "enable_nested_tensor is True, but ..." for the pre-norm / seq-first ones
        return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16)).eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_transformer_encoder(norm_first, batch_first, train):
    model = _encoder(norm_first, batch_first)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    ids = _assert_rewrites_equal(model, x, train=train, min_candidates=4)
    assert "layers.0:layer" in ids and "layers.1.linear2:branch" in ids


def test_transformer_encoder_padding_mask_nested_path():
    # post-norm + batch_first: with a padding mask the encoder runs its layers on a nested tensor
    model = _encoder(False, True)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    graph = flowprune.trace(model, (x, None, mask))
    valid = (~mask).unsqueeze(-1)
    with flowprune.Gates(graph) as gates:
        for c in graph.candidates():
            with gates.removed([c.id]):
                ref = _out(model, (x, None, mask))[0]
            got = _out(flowprune.apply(model, graph.plan([c.id])), (x, None, mask))[0]
            # padded positions are unspecified (the fused path zeroes them, the Python path does not)
            assert ((ref - got) * valid).abs().max().item() <= 1e-5, c.id


def test_stub_answers_reads_without_weights():
    model = _encoder(True, True)
    graph = flowprune.trace(model, torch.randn(2, 5, 16))
    small = flowprune.apply(model, graph.plan(["layers.0:layer"]))
    stub = small.layers[0]
    assert (
        stub.self_attn.batch_first is True
        and stub.norm1.eps == 1e-5
        and stub.self_attn.num_heads == 4
    )
    w = stub.self_attn.in_proj_weight
    assert isinstance(w, RemovedTensor) and w.shape == (48, 16) and w.dtype == torch.float32
    assert torch.overrides.has_torch_function((w,))  # what makes fused fast paths decline
    with pytest.raises(RuntimeError, match="removed by flowprune.apply"):
        w + 1
    with pytest.raises(AttributeError, match="had no attribute"):
        stub.self_attn.nonexistent
    assert sum(p.numel() for p in stub.parameters()) == 0


def _tiny(config_cls: str, model_cls: str, **kw: Any) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()


_IDS = {
    "input_ids": torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0)),
    "use_cache": False,
}


def test_mamba():
    model = _tiny(
        "MambaConfig",
        "MambaForCausalLM",
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        state_size=4,
        expand=2,
        conv_kernel=4,
        time_step_rank=4,
    )
    ids = _assert_rewrites_equal(model, _IDS, min_candidates=4)
    assert "backbone.layers.0.mixer:branch" in ids


def test_bloom_alibi():
    # BLOOM's ALiBi attention calls alibi.baddbmm(batch1=..., batch2=...) with keyword operands
    model = _tiny(
        "BloomConfig",
        "BloomForCausalLM",
        vocab_size=100,
        hidden_size=16,
        n_layer=2,
        n_head=4,
        attn_implementation="eager",
    )
    ids = _assert_rewrites_equal(model, _IDS, min_candidates=4)
    assert "transformer.h.0:layer" in ids
    assert flowprune.trace(model, _IDS).total_flops > 0


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    from flowprune.zoo import ZOO

    return ZOO["mlp_skip"].build(), ZOO["mlp_skip"].inputs()


def _check_wrapper(wrapped: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    graph = flowprune.trace(wrapped, x)
    assert graph.model is model
    ids = [c.id for c in graph.candidates()]
    assert ids == [c.id for c in flowprune.trace(model, x).candidates()]
    assert not any(i.startswith(("_orig_mod.", "module.")) for i in ids)
    plan = graph.plan([ids[0]])
    with flowprune.Gates(graph) as gates, gates.removed([ids[0]]):
        ref = _out(model, x)[0]
    for target in (wrapped, model):  # the plan applies to the wrapper and to the bare model
        small = flowprune.apply(target, plan)
        assert type(small) is type(model)  # a plain module: wrap it again to compile / parallelise
        assert torch.allclose(_out(small, x)[0], ref, atol=1e-5)


def test_torch_compile_unwrapped():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    model, x = _mlp()
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    _check_wrapper(compiled, model, x)


def test_data_parallel_unwrapped():
    model, x = _mlp()
    dp = nn.DataParallel(model)
    assert unwrap(dp) is model and unwrap(nn.DataParallel(torch.compile(model))) is model
    _check_wrapper(dp, model, x)


def test_fsdp_refused():
    class FullyShardedDataParallel(
        nn.Module
    ):  # stands for torch's FSDP, which needs a process group
        pass

    with pytest.raises(InputError, match="before wrapping it in FSDP"):
        flowprune.trace(FullyShardedDataParallel(), torch.zeros(1))


class _SharedActFFN(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.lin1, self.act, self.lin2 = nn.Linear(8, 16), act, nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class _SharedAct(nn.Module):
    """Flaubert's pattern: one activation object in every FFN, registered under ffns.0 only."""

    def __init__(self):
        super().__init__()
        act = nn.GELU()
        self.ffns = nn.ModuleList([_SharedActFFN(act), _SharedActFFN(act)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.ffns:
            x = x + f(x)
        return self.head(x)


def test_shared_submodule_keeps_running_in_other_parent():
    torch.manual_seed(0)
    ids = _assert_rewrites_equal(_SharedAct().eval(), torch.randn(4, 8), min_candidates=2)
    assert "ffns.0:branch" in ids


class _BiasBlock(nn.Module):
    """T5's pattern: the first block computes a bias and hands it to the next blocks as a side output."""

    def __init__(self, first: bool):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bias = nn.Parameter(torch.randn(8)) if first else None

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.bias.expand_as(x) * 1.0 if self.bias is not None else bias
        return x + torch.tanh(self.fc(x) + bias), bias


class _BiasStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_BiasBlock(True), _BiasBlock(False), _BiasBlock(False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        for b in self.blocks:
            x, bias = b(x, bias)
        return x


def test_removed_layer_side_outputs_follow_the_stub():
    torch.manual_seed(0)
    ids = _assert_rewrites_equal(_BiasStack().eval(), torch.randn(4, 8), min_candidates=3)
    assert "blocks.0:layer" in ids


def test_prune_compiled_model_gives_plain_module():
    model, x = _mlp()
    small, _ = flowprune.prune(
        torch.compile(model), [x, x], flowprune.Budget(count=1), progress=False
    )
    assert type(small) is type(model)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
