"""Adding a criterion or a strategy is one registry entry plus its function (docs/ARCHITECTURE.md):
the examples there, run for real, reach analyze, the report, planning, validation and the CLI."""

import pytest
import torch

import flowprune
from flowprune import Budget, InputError
from flowprune.analyses import ANALYSES, CRITERIA, MATRIX_PREFERENCE, Analysis, Result
from flowprune.score.taylor import gradient_and_hessian
from flowprune.solve import STRATEGIES, Problem, Strategy
from flowprune.zoo import ZOO


def run_snip(eng, ctx):
    g, _ = gradient_and_hessian(eng, hessian="none")
    return Result({c.id: {"snip": float(abs(g[k]))} for k, c in enumerate(eng.candidates)})


def cheapest_first(p: Problem) -> list[str]:
    chosen = []
    for c in sorted(p.candidates, key=lambda c: c.params):
        if p.met(chosen):
            break
        chosen.append(c.id)
    return chosen


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(
        ANALYSES, "snip", Analysis("snip", run_snip, "|∂L/∂α| at α = 1", {"snip": "SNIP"})
    )
    monkeypatch.setitem(
        STRATEGIES,
        "cheapest_first",
        Strategy("cheapest_first", cheapest_first, "scores", "small first"),
    )


def _data():
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 128, (2, 8), generator=gen)}]


def test_an_added_criterion_and_strategy_reach_every_consumer(registered):
    m = ZOO["llama"].build()
    rep = flowprune.analyze(m, _data(), loss="lm", criteria=("loss", "snip"), progress=False)
    assert "snip" in rep.criteria and all(r["snip"] >= 0 for r in rep.candidates)
    assert "SNIP" in rep.to_markdown()
    plan = rep.plan(Budget(count=2), criterion="snip", strategy="cheapest_first")
    smallest = sorted(rep.candidates, key=lambda r: r["params"])
    assert len(plan.removals) == 2 and {r.params for r in plan.removals} <= {
        r["params"] for r in smallest[:3]
    }
    assert rep.plans[-1].strategy == "cheapest_first" and rep.plans[-1].plan == plan
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        rep.plan(1, strategy="nope")


def test_the_matrix_preference_is_explicit():
    m = ZOO["llama"].build()
    rep = flowprune.analyze(m, _data(), criteria=("taylor2_diag", "fisher"), progress=False)
    # both computed: the Fisher (a full matrix, interactions kept) wins over the Hutchinson diagonal
    assert MATRIX_PREFERENCE.index("fisher") < MATRIX_PREFERENCE.index("taylor2_diag")
    assert rep.data.hessian_kind == "fisher"
    H = rep.hessian
    assert (
        H is not None
        and H.shape[0] == len(rep.candidates)
        and (H - torch.diag(H.diagonal())).abs().sum() > 0
    )


def test_every_criterion_has_an_analysis_and_a_description():
    assert set(CRITERIA) >= {"loss", "flow", "taylor2", "fisher", "magnitude", "random"}
    for name, c in CRITERIA.items():
        assert c.description and (c.analysis in ANALYSES or c.analysis == "baselines"), name
