"""Modules called several times per forward (shared weights, ALBERT): one candidate per call.

Each call is a removable vertex ``"<path>:<kind>@<k>"``: gated on that call only, rewritten into a module
that skips that call, with exact parameter/FLOP predictions, plan JSON, exact ablation with replay, and
Hugging Face ``AlbertModel`` saved and loaded."""

import copy
import io
import json
import random

import pytest
import torch
from torch import nn

import flowprune
from flowprune.plan import Plan
from flowprune.rewrite.calls import skipping
from flowprune.score.ablation import ablate
from flowprune.score.engine import Engine
from flowprune.solve import max_removals, overlaps


class Block(nn.Module):
    """Pre-norm residual block: two residual branches (``mix``, ``fc2``)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.mix(self.norm(x))
        return x + self.fc2(torch.relu(self.fc1(x)))


class Albertish(nn.Module):
    """ALBERT-style: one block applied ``n`` times."""

    def __init__(self, d: int = 8, n: int = 4):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.layer = Block(d)
        self.n = n
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x)
        for _ in range(self.n):
            h = self.layer(h)
        return self.head(h)


class TwiceInList(nn.Module):
    """A list that holds the same block object twice (and another block once)."""

    def __init__(self, d: int = 8):
        super().__init__()
        blk = Block(d)
        self.inp = nn.Linear(5, d)
        self.layers = nn.ModuleList([blk, Block(d), blk])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class Recursive(nn.Module):
    """Re-entrant: the module calls itself, so call 1 runs inside call 0."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.f = nn.Linear(d, d)

    def forward(self, x, depth: int = 3):
        y = x + self.f(x)
        return self(y, depth - 1) if depth > 1 else y


class Reentrant(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.rec = Recursive(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.rec(self.inp(x)))


class Stage(nn.Module):
    def __init__(self, blk: nn.Module):
        super().__init__()
        self.blk = blk

    def forward(self, x):
        return self.blk(self.blk(x))


class SharedAcross(nn.Module):
    """A block called twice inside a stage (called once) and once more after it: replaying the stage
    skips two of the block's calls, and the third must still be gated as call 2."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.blk = Block(d)
        self.stage = Stage(self.blk)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blk(self.stage(self.inp(x))))


MODELS = {
    "albertish": Albertish,
    "twice_in_list": TwiceInList,
    "reentrant": Reentrant,
    "across": SharedAcross,
}


def _build(name):
    torch.manual_seed(0)
    return MODELS[name]().eval(), torch.randn(6, 5)


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _check(model, graph, gates, ids, x):
    """Rewrite == gated at two batch sizes; predicted params/FLOPs == those of the rewritten model."""
    with gates.removed(ids), torch.no_grad():
        want = [model(x), model(x[:2])]
    small = flowprune.apply(model, graph.plan(ids))
    with torch.no_grad():
        got = [small(x), small(x[:2])]
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), ids
    eff = graph.effect(ids)
    assert _params(model) - _params(small) == eff.params, ids
    assert graph.total_flops - flowprune.trace(small, x).total_flops == eff.flops, ids
    return small, eff


def test_one_candidate_per_call_of_a_shared_block():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)
    ids = [c.id for c in graph.candidates()]
    assert ids == [
        f"layer{s}@{k}" for k in range(4) for s in (":layer", ".mix:branch", ".fc2:branch")
    ]
    for c in graph.candidates():
        rec = graph.call(c.cid)
        assert c.call == rec.k and c.id.endswith(f"@{rec.k}") and c.params == 0
        # one call: its FLOPs (and those of the fc1 call that only fed a removed fc2 call), no parameters
        fed = graph.calls_of("layer.fc1")[rec.k].flops if c.path == "layer.fc2" else 0
        assert c.flops == rec.flops + fed and rec.flops > 0


def test_single_call_ids_are_unchanged():
    m, x = _build("twice_in_list")
    ids = {c.id for c in flowprune.trace(m, x).candidates()}
    assert {
        "layers.1:layer",
        "layers.1.mix:branch",
        "layers.1.fc2:branch",
    } <= ids  # called once: no "@"
    assert {"layers.0:layer@0", "layers.0:layer@1"} <= ids  # layers.0 and layers.2 are one object


@pytest.mark.parametrize("name", list(MODELS))
def test_each_call_rewritten_equals_gated_with_exact_savings(name):
    m, x = _build(name)
    graph = flowprune.trace(m, x)
    assert graph.candidates()
    with flowprune.Gates(graph) as gates:
        assert gates.failed == {}
        for c in graph.candidates():
            _, eff = _check(m, graph, gates, [c.id], x)
            assert (eff.params, eff.flops) == (c.params, c.flops)


@pytest.mark.parametrize("name", list(MODELS))
def test_sets_of_calls_nested_and_not(name):
    m, x = _build(name)
    graph = flowprune.trace(m, x)
    ids = [c.id for c in graph.candidates()]
    rng = random.Random(0)
    with flowprune.Gates(graph) as gates:
        for k in (2, 3, 4):
            for _ in range(4):
                _check(m, graph, gates, rng.sample(ids, min(k, len(ids))), x)


def test_removing_every_call_removes_the_parameters():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)
    layers = [f"layer:layer@{k}" for k in range(4)]
    with flowprune.Gates(graph) as gates:
        _check(m, graph, gates, layers[:3], x)  # three of four calls: FLOPs only
        assert graph.effect(layers[:3]).params == 0
        small, eff = _check(m, graph, gates, layers, x)
    assert eff.params == _params(m.layer) and type(small.layer).__name__ == "Removed"
    assert eff.flops == sum(graph.call(c.cid).flops for c in graph.calls_of("layer"))

    m, x = _build("twice_in_list")  # the block in two list slots: both go
    graph = flowprune.trace(m, x)
    with flowprune.Gates(graph) as gates:
        small, eff = _check(m, graph, gates, ["layers.0:layer@0", "layers.0:layer@1"], x)
    assert eff.params == _params(m.layers[0])
    assert type(small.layers[0]).__name__ == type(small.layers[2]).__name__ == "Removed"


def test_a_kept_call_leaves_the_module_in_place_skipping_the_removed_calls():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)
    plan = graph.plan(["layer:layer@1", "layer.fc2:branch@3"])
    small = flowprune.apply(m, plan)
    assert type(small.layer) is Block and small.state_dict().keys() == m.state_dict().keys()
    assert skipping(small.layer).skip == [1] and skipping(small.layer.fc2).skip == [
        2
    ]  # 3 -> 2: layer#1 is gone
    assert skipping(small.layer.fc2).ncalls == 3
    # re-traced, the skipped call is not offered again; the others are
    again = {c.id for c in flowprune.trace(small, x).candidates()}
    assert "layer:layer@1" not in again and "layer:layer@2" in again


def test_a_second_plan_on_the_rewritten_model_adds_its_calls():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)
    small = flowprune.apply(m, graph.plan(["layer:layer@1"]))
    again = flowprune.trace(small, x)
    smaller = flowprune.apply(small, again.plan(["layer:layer@2", "layer.mix:branch@0"]))
    assert skipping(smaller.layer).skip == [1, 2]
    with (
        flowprune.Gates(graph) as gates,
        gates.removed(["layer:layer@1", "layer:layer@2", "layer.mix:branch@0"]),
        torch.no_grad(),
    ):
        want = m(x)
    with torch.no_grad():
        assert torch.allclose(smaller(x), want, atol=1e-5, rtol=0)


def test_plan_json_round_trip():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)
    plan = graph.plan(["layer:layer@0", "layer.mix:branch@2"])
    d = json.loads(plan.to_json())
    per_call = [r for r in d["replacements"] if "calls" in r]
    assert sorted((r["path"], r["calls"], r["ncalls"]) for r in per_call) == [
        ("layer", [0], 4),
        ("layer.mix", [1], 3),
    ]
    again = Plan.from_json(plan.to_json())
    assert again == plan
    with torch.no_grad():
        a, b = flowprune.apply(m, plan)(x), flowprune.apply(m, again)(x)
    assert torch.equal(a, b)
    single = json.loads(
        flowprune.trace(*_build("twice_in_list")).plan(["layers.1:layer"]).to_json()
    )
    assert all("calls" not in r and "ncalls" not in r for r in single["replacements"])  # as before


def test_call_counts_restart_every_forward_even_after_an_exception():
    m, x = _build("albertish")
    graph = flowprune.trace(m, x)

    def boom(module, args):
        if getattr(boom, "armed", False):
            boom.armed = False
            raise RuntimeError("cut short")

    with flowprune.Gates(graph) as gates, gates.removed(["layer:layer@2"]), torch.no_grad():
        want = m(x)
        h = m.layer.fc1.register_forward_pre_hook(boom)
        boom.armed = True
        with pytest.raises(RuntimeError):
            m(x)  # stops inside the first call: the counts are left mid-forward
        h.remove()
        assert torch.equal(m(x), want)
    small = flowprune.apply(m, graph.plan(["layer:layer@2"]))
    with torch.no_grad():
        assert torch.allclose(small(x), want, atol=1e-6)
        h = small.layer.fc1.register_forward_pre_hook(boom)
        boom.armed = True
        with pytest.raises(RuntimeError):
            small(x)
        h.remove()
        assert torch.allclose(small(x), want, atol=1e-6) and torch.allclose(
            small(x), want, atol=1e-6
        )


def test_the_rewrite_survives_deepcopy_and_pickle():
    m, x = _build("twice_in_list")
    graph = flowprune.trace(m, x)
    small = flowprune.apply(m, graph.plan(["layers.0:layer@1", "layers.0.mix:branch@0"]))
    with torch.no_grad():
        want = small(x)
        dup = copy.deepcopy(small)
        assert skipping(dup.layers[0]).module is dup.layers[0]  # the copy skips its own calls
        assert torch.equal(dup(x), want) and torch.equal(dup(x), want)
        buf = io.BytesIO()
        torch.save(small, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(loaded(x), want) and torch.equal(loaded(x), want)


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_ablation_with_replay_equals_naive(name):
    torch.manual_seed(0)
    m = MODELS[name]().eval()
    xs = [torch.randn(6, 5) for _ in range(2)]
    graph = flowprune.trace(m, xs[0])
    with Engine(graph, xs, "distill", progress=False) as eng:
        base = eng.loss()
        a, b = ablate(eng, replay=True, base_loss=base), ablate(eng, replay=False, base_loss=base)
        assert set(a) == {c.id for c in eng.candidates}
        for cid in a:
            assert a[cid]["loss"] == pytest.approx(b[cid]["loss"], abs=1e-6), cid
            assert a[cid]["loss"] == pytest.approx(eng.loss([cid]) - base, abs=1e-6), cid
        ids = [c.id for c in eng.candidates]
        removed = [ids[1], ids[-1]]  # other per-call gates at 0 while earlier calls are replayed
        L = eng.loss(removed)
        rest = [i for i in ids if i not in removed]
        c = ablate(eng, rest, base=removed, base_loss=L)
        for cid in rest:
            assert c[cid]["loss"] == pytest.approx(eng.loss(removed + [cid]) - L, abs=1e-6), cid


def test_solver_helpers_count_each_call():
    m, x = _build("albertish")
    cands = flowprune.trace(m, x).candidates()
    by = {c.id: c for c in cands}
    assert not overlaps(by["layer:layer@0"], by["layer:layer@1"])
    assert overlaps(by["layer:layer@1"], by["layer.mix:branch@1"])
    assert not overlaps(by["layer:layer@1"], by["layer.mix:branch@2"])
    assert max_removals(cands) == 8  # per call: the two branches


# -- Hugging Face ALBERT ---------------------------------------------------------------------------------
def _albert():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    cfg = AlbertConfig(
        vocab_size=64,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        initializer_range=0.5,
        num_labels=5,
    )
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xs = [{"input_ids": torch.randint(0, 64, (2, 7), generator=gen)} for _ in range(2)]
    return AlbertForSequenceClassification(cfg).eval(), xs


def test_hf_albert_calls_are_candidates_and_rewrite_equals_gated():
    m, xs = _albert()
    x, x2 = xs[0], {"input_ids": torch.cat([xs[1]["input_ids"], xs[0]["input_ids"]])[:, :5]}
    graph = flowprune.trace(m, x)
    group = "albert.encoder.albert_layer_groups.0"
    ids = [c.id for c in graph.candidates()]
    assert len(ids) == 15 and all(
        f"{group}{s}@{k}" in ids
        for k in range(3)
        for s in (":layer", ".albert_layers.0:layer", ".albert_layers.0.ffn_output:branch")
    )
    ffn = f"{group}.albert_layers.0.ffn"
    c = graph.candidate(f"{ffn}_output:branch@1")  # the ffn call that only fed it is skipped too
    assert c.flops == graph.calls_of(f"{ffn}_output")[1].flops + graph.calls_of(ffn)[1].flops
    with flowprune.Gates(graph) as gates:
        assert gates.failed == {}
        for c in graph.candidates():
            with gates.removed([c.id]), torch.no_grad():
                want = [m(**x).logits, m(**x2).logits]
            small = flowprune.apply(m, graph.plan([c.id]))
            with torch.no_grad():
                got = [small(**x).logits, small(**x2).logits]
            assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(want, got)), c.id
            assert graph.total_flops - flowprune.trace(small, x).total_flops == c.flops


def test_hf_albert_exact_ablation_with_replay():
    m, xs = _albert()
    graph = flowprune.trace(m, xs[0])
    with Engine(graph, xs, "distill", progress=False) as eng:
        removed = ["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output:branch@2"]
        L = eng.loss(removed)
        rest = [c.id for c in eng.candidates if c.id not in removed]
        got = ablate(eng, rest, base=removed, base_loss=L)  # replays group calls 0, 1 for calls 2
        assert max(abs(v["loss"]) for v in got.values()) > 1e-2  # removals matter in this model
        for cid in rest:
            assert got[cid]["loss"] == pytest.approx(eng.loss(removed + [cid]) - L, abs=1e-6), cid


def test_hf_albert_save_and_load_pretrained(tmp_path):
    m, xs = _albert()
    graph = flowprune.trace(m, xs[0])
    ids = [
        "albert.encoder.albert_layer_groups.0:layer@1",
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.dense:branch@0",
    ]
    small = flowprune.apply(m, graph.plan(ids))
    flowprune.save_pretrained(small, tmp_path / "p")
    back = flowprune.load_pretrained(tmp_path / "p")
    with torch.no_grad():
        for x in xs:
            assert torch.allclose(back(**x).logits, small(**x).logits, atol=1e-6, rtol=0)
    # every call of a branch removed: its parameters go, also after loading
    every = [
        f"albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output:branch@{k}"
        for k in range(3)
    ]
    small = flowprune.apply(m, graph.plan(every))
    assert _params(m) - _params(small) == graph.effect(every).params > 0
    flowprune.save_pretrained(small, tmp_path / "q")
    back = flowprune.load_pretrained(tmp_path / "q")
    assert _params(back) == _params(small)
    with torch.no_grad():
        assert torch.allclose(back(**xs[0]).logits, small(**xs[0]).logits, atol=1e-6, rtol=0)
