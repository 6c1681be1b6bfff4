"""The fuzzer (``benchmarks/fuzz.py``) on a few hypothesis-built architectures, so CI runs it: no crash,
every rewrite equals the gated model, every parameter drop equals the prediction.  Plus the failures
the fuzzer found, as fixed regressions or as strict xfails until they are fixed."""

import pytest
import torch

from flowprune.zoo import fuzzing
from flowprune.zoo.random_nets import Block, NetSpec, build, net_specs, tame, writes_input

BAD = ("crash", "wrong", "params", "modified", "invalid")


def _failures(outcomes):
    return [(f.category, f.detail, f.ids, o.spec) for o in outcomes for f in o.failures if f.category in BAD]


def test_fuzz_random_architectures():
    # blocks writing into their own input are left out here: see the xfail below
    outcomes = fuzzing.run(25, input_writes=False)
    t = fuzzing.totals(outcomes)
    assert t["examples"] == 25 and t["traced"] == 25
    assert t["rewrites"] > 25 and t["equal"] == t["rewrites"]
    assert _failures(outcomes) == []


def test_every_spec_builds_and_tame_removes_input_writes():
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=40, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=net_specs())
    def one(spec):
        model, x = build(spec)
        with torch.no_grad():
            model(x)
        assert not any(writes_input(tame(b)) for b in spec.conv + spec.blocks)

    one()


def test_wrapper_of_a_removed_layer_is_not_dead():
    # found by the fuzzer: blocks.0.seq holds only blocks.0.seq.0; removing it (identity) and blocks.1
    # (identity) made effect() call blocks.0.seq dead (its vertices were looked up by their pre-contraction
    # names) and stub it with zeros
    spec = NetSpec("vec", 3, blocks=(Block("plain", 3, act="identity", variant=1), Block("res")))
    ids = ["blocks.1:layer", "blocks.0.seq.0:layer"]
    o = fuzzing.check_spec(spec, pick=lambda _: ids)
    assert o.rewrites == o.candidates + 1 and o.failures == []


@pytest.mark.xfail(strict=True, reason="a layer gate reads the block's input after the block wrote into it "
                                       "(x += f(x)): at alpha=0 it returns x + f(x), the identity stub x")
def test_layer_that_writes_into_its_input():
    spec = NetSpec("vec", 3, blocks=(Block("res", width=2, variant=3),))
    o = fuzzing.check_spec(spec)
    assert [f.category for f in o.failures] == []
