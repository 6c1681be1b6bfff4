"""The catalogue of bad inputs and faults: each case must raise one clear flowprune error whose message
names the cause, and leave the user's model exactly as it was (weights, train/eval flags,
requires_grad, hooks, module types).  A case is (name, the expected error type, a regex the message
must match, the call); the call gets a fresh fixture ``f`` (model, data, report, ...)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

import flowprune
from flowprune import Budget, InputError, PlanError
from flowprune.cli import main
from flowprune.errors import CandidateError
from flowprune.zoo import ZOO

GEN = torch.Generator().manual_seed(0)


class Plain(nn.Module):
    """No residual, no container: nothing is removable."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class NaNOut(nn.Module):
    """A residual MLP whose weights hold a NaN: every output is NaN."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        with torch.no_grad():
            self.blocks[0].weight[0, 0] = float("nan")

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


class Fixture:
    """A tiny Llama with its data, a live report, a graph, a plan and the model snapshot."""

    def __init__(self):
        self.model = ZOO["llama"].build()
        self.model.train()  # the user's flag: must survive every failure
        self.data = [{"input_ids": torch.randint(0, 128, (2, 8), generator=GEN)} for _ in range(2)]
        self._report = None

    @property
    def report(self):
        if self._report is None:
            self._report = flowprune.analyze(
                self.model, self.data, criteria=("flow", "loss"), progress=False
            )
        return self._report

    @property
    def graph(self):
        return flowprune.trace(self.model, {**self.data[0], "use_cache": False})

    def ids(self, kind="layer"):
        return [c.id for c in self.graph.candidates(kind)]


def _nan_batch(f):
    x = torch.randn(2, 8)
    bad = x.clone()
    bad[1, 3] = float("nan")
    return flowprune.analyze(NaNOut().blocks[1:], [x, bad], progress=False)


def _stale_graph(f):
    m = ZOO["llama"].build()  # pruned in place on purpose (f.model is the one checked unchanged)
    g = flowprune.trace(m, {**f.data[0], "use_cache": False})
    flowprune.apply_(m, g.plan([g.candidates("layer")[0].id]))
    return g.plan([g.candidates("layer")[1].id])


def _half_bad_plan(f):
    g = f.graph
    plan = g.plan([g.candidates("branch")[0].id, g.candidates("layer")[-1].id])
    reps = list(plan.replacements)
    reps[-1] = replace(reps[-1], mode="delete", path="model.norm")  # not an element of a layer list
    return flowprune.apply_(f.model, replace(plan, replacements=tuple(reps)))


def _missing_module_plan(f):
    g = f.graph
    plan = g.plan([g.candidates("branch")[0].id])
    reps = (plan.replacements[0], replace(plan.replacements[0], path="model.layers.9.mlp"))
    return flowprune.apply_(f.model, replace(plan, replacements=reps))


def _twice(f):
    g = f.graph
    plan = g.plan([g.candidates("layer")[0].id])
    small = flowprune.apply(f.model, plan)
    return flowprune.apply_(small, plan)


def _other_model(f):
    g = flowprune.trace(ZOO["gpt2"].build(), {"input_ids": torch.randint(0, 128, (2, 8))})
    return flowprune.apply(f.model, g.plan([g.candidates("layer")[0].id]))


CASES = [
    # budgets
    ("count float", InputError, "whole number", lambda f: Budget(count=2.5)),
    ("count bool", InputError, "whole number", lambda f: Budget(count=True)),
    ("count negative", InputError, ">= 0", lambda f: Budget(count=-1)),
    ("params string", InputError, "a number", lambda f: Budget(params="0.2")),
    ("params above 1", InputError, "fraction", lambda f: Budget(params=1.5)),
    ("params zero", InputError, "fraction", lambda f: Budget(params=0.0)),
    ("loss nan", InputError, "finite", lambda f: Budget(max_loss_increase=float("nan"))),
    ("flops inf", InputError, "finite", lambda f: Budget(flops=float("inf"))),
    ("loss negative", InputError, ">= 0", lambda f: Budget(max_loss_increase=-0.1)),
    ("no field", InputError, "exactly one", lambda f: Budget()),
    ("two fields", InputError, "exactly one", lambda f: Budget(count=1, params=0.1)),
    ("dict typo", InputError, "unknown keys", lambda f: Budget.parse({"cout": 2})),
    ("budget string", InputError, "budget must be", lambda f: Budget.parse("0.25")),
    # requests that cannot be met, refused before the scoring
    (
        "count above candidates",
        InputError,
        r"at most \d+ of the \d+ candidates",
        lambda f: flowprune.prune(f.model, f.data, Budget(count=99), progress=False),
    ),
    (
        "params unreachable",
        InputError,
        r"at most [\d.]+% of the params",
        lambda f: flowprune.prune(f.model, f.data, Budget(params=0.99), progress=False),
    ),
    (
        "unknown strategy",
        InputError,
        "unknown strategy 'best'",
        lambda f: flowprune.prune(f.model, f.data, 1, strategy="best", progress=False),
    ),
    (
        "unknown fill",
        InputError,
        "unknown fill 'median'",
        lambda f: flowprune.prune(f.model, f.data, 1, fill="median", progress=False),
    ),
    (
        "unknown kind",
        InputError,
        "unknown kind 'head'",
        lambda f: flowprune.prune(f.model, f.data, 1, kind="head", progress=False),
    ),
    (
        "unknown criterion",
        InputError,
        "unknown criterion 'flw'",
        lambda f: flowprune.prune(
            f.model, f.data, 1, criterion="flw", strategy="one_shot", progress=False
        ),
    ),
    (
        "greedy ignores criterion",
        InputError,
        "greedy.*criterion='flow'",
        lambda f: flowprune.prune(
            f.model, f.data, 1, criterion="flow", strategy="greedy", progress=False
        ),
    ),
    (
        "quadratic on flow",
        InputError,
        "quadratic.*criterion='flow'",
        lambda f: flowprune.prune(
            f.model, f.data, 1, criterion="flow", strategy="quadratic", progress=False
        ),
    ),
    (
        "unknown analysis",
        InputError,
        r"unknown criteria \['bogus'\]",
        lambda f: flowprune.analyze(f.model, f.data, criteria=("flow", "bogus"), progress=False),
    ),
    (
        "unknown loss",
        InputError,
        "unknown loss 'mse'",
        lambda f: flowprune.analyze(f.model, f.data, loss="mse", progress=False),
    ),
    (
        "no candidates",
        InputError,
        "no removal candidates",
        lambda f: flowprune.prune(Plain(), torch.randn(4, 8), 1, progress=False),
    ),
    (
        "kind absent",
        InputError,
        "no 'branch' candidates",
        lambda f: flowprune.prune(
            ZOO["vgg_bn"].build(), ZOO["vgg_bn"].inputs(), 1, kind="branch", progress=False
        ),
    ),
    (
        "report strategy",
        InputError,
        "unknown strategy 'fast'",
        lambda f: f.report.plan(1, strategy="fast"),
    ),
    (
        "report criterion",
        InputError,
        "unknown criterion 'taylor2'",
        lambda f: f.report.plan(1, criterion="taylor2"),
    ),
    ("report count", InputError, "at most", lambda f: f.report.plan(Budget(count=50))),
    ("report fill", InputError, "unknown fill", lambda f: f.report.plan(1, fill="avg")),
    ("report restrict", InputError, "unknown kind", lambda f: f.report.restrict("head")),
    (
        "plan from a string",
        InputError,
        r"pass \['model.layers.0:layer'\]",
        lambda f: f.graph.plan("model.layers.0:layer"),
    ),
    (
        "unknown candidate",
        CandidateError,
        "no candidate 'model.layers.0:lyr'.*did you mean",
        lambda f: f.graph.plan(["model.layers.0:lyr"]),
    ),
    # data
    ("nan in a batch", InputError, "calibration batch 1 contains NaN", _nan_batch),
    (
        "inf in a batch",
        InputError,
        "calibration batch 0 contains NaN or inf",
        lambda f: flowprune.analyze(NaNOut(), [torch.full((2, 8), math.inf)], progress=False),
    ),
    (
        "nan output",
        InputError,
        "output on calibration batch 0 contains NaN",
        lambda f: flowprune.analyze(NaNOut(), [torch.randn(2, 8)], progress=False),
    ),
    ("no batch", InputError, "no batch", lambda f: flowprune.analyze(f.model, [], progress=False)),
    (
        "num_samples 0",
        InputError,
        "num_samples=0",
        lambda f: flowprune.analyze(f.model, f.data, num_samples=0, progress=False),
    ),
    (
        "data not iterable",
        InputError,
        "data must be",
        lambda f: flowprune.analyze(f.model, 5, progress=False),
    ),
    (
        "inputs as list",
        InputError,
        "is a list",
        lambda f: flowprune.trace(f.model, [f.data[0]["input_ids"]]),
    ),
    (
        "not a module",
        InputError,
        "torch.nn.Module",
        lambda f: flowprune.trace(lambda x: x, torch.ones(1)),
    ),
    # plans
    ("stale graph", PlanError, "changed since this graph was traced", _stale_graph),
    ("other model", PlanError, "made for a .* this is a", _other_model),
    ("applied twice", PlanError, "already applied", _twice),
    (
        "missing module",
        PlanError,
        "'model.layers.9.mlp', which this model does not have",
        _missing_module_plan,
    ),
    ("half-bad plan", PlanError, "cannot delete 'model.norm'", _half_bad_plan),
    (
        "fill without data",
        PlanError,
        "pass data=",
        lambda f: flowprune.apply(f.model, f.graph.plan([f.ids("branch")[0]], fill="mean")),
    ),
    (
        "plan json",
        PlanError,
        "not a flowprune plan",
        lambda f: flowprune.Plan.from_json('{"removals": 1}'),
    ),
    # saving and loading
    (
        "save a plain module",
        InputError,
        "Hugging Face model",
        lambda f: flowprune.save_pretrained(Plain(), "x"),
    ),
]


def _snapshot(m: nn.Module) -> tuple:
    return (
        {k: v.detach().clone() for k, v in m.state_dict().items()},
        [
            (n, type(x).__name__, x.training, len(x._forward_hooks), len(x._forward_pre_hooks))
            for n, x in m.named_modules()
        ],
        [(n, p.requires_grad) for n, p in m.named_parameters()],
    )


def _same(a: tuple, b: tuple) -> bool:
    return (
        a[0].keys() == b[0].keys()
        and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
        and a[1] == b[1]
        and a[2] == b[2]
    )


@pytest.mark.parametrize("name, error, match, call", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(name, error, match, call):
    f = Fixture()
    if name in (
        "report strategy",
        "report criterion",
        "report count",
        "report fill",
        "report restrict",
    ):
        f.report  # analysed before the snapshot: only the failing call is under test
    before = _snapshot(f.model)
    with pytest.raises(error, match=match) as info:
        call(f)
    assert isinstance(info.value, flowprune.FlowpruneError)
    assert "\n" not in str(info.value)
    assert _same(before, _snapshot(f.model)), f"{name}: the model changed"


def test_catalogue_size():
    assert len(CASES) + len(CLI_CASES) >= 40


CLI_CASES = [
    (["prune", "--budget", "nan"], "finite number"),
    (["prune", "--budget", "inf"], "finite number"),
    (["prune", "--num-samples", "0"], "≥ 1"),
    (["prune", "--seq-len", "0"], "≥ 1"),
    (["prune", "--criteria", "flow,nope"], "unknown criteria"),
    (["prune", "--strategy", "greedy", "--criterion", "flow"], "greedy"),
    (["prune", "--unit", "count", "--budget", "1.5"], "whole number"),
    (["analyze", "--data", "nowhere"], "use python-docs"),
]


@pytest.mark.parametrize("argv, match", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_refuses_before_any_work(argv, match, capsys, tmp_path):
    try:
        code = main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    except SystemExit as e:  # argparse's own checks (types, choices)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and match in err and err.startswith("flowprune: error: ") and "\n" not in err
    ), err
    assert not (tmp_path / "out").exists()  # nothing was written: refused before the work


def test_cli_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--budget", "nan"])
    assert e.value.code == 2 and "finite number" in capsys.readouterr().err


def test_cli_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert main(["prune", "--out", str(target), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_cli_lm_loss_on_an_encoder_is_refused_before_the_analysis(tmp_path, capsys):
    enc = ZOO["bert"].build()
    flowprune.save_pretrained(enc, tmp_path / "enc")
    assert (
        main(
            [
                "prune",
                "--model",
                str(tmp_path / "enc"),
                "--loss",
                "lm",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--loss lm needs a causal LM" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_stream_stops_at_the_documented_default_and_says_so():
    from flowprune.data import STREAM_SAMPLES, as_batches

    def forever():
        while True:
            yield torch.randn(4, 8)

    with pytest.warns(UserWarning, match=f"first {STREAM_SAMPLES} samples"):
        batches = as_batches(forever())
    assert sum(len(b) for b in batches) == STREAM_SAMPLES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(b) for b in as_batches(forever(), num_samples=10)) == 10  # asked: no warning


def test_a_pruned_model_never_offers_its_stubs():
    m = ZOO["llama"].build()
    x = {"input_ids": torch.randint(0, 128, (2, 8), generator=GEN), "use_cache": False}
    g = flowprune.trace(m, x)
    branch = g.candidates("branch")[0]
    small = flowprune.apply(m, g.plan([branch.id], fill="linear"), data=[x])
    again = flowprune.trace(small, x).candidates()
    assert again and not any(
        c.path == branch.path or c.path.startswith(branch.path + ".") for c in again
    )


def test_budget_json_roundtrip_keeps_validation():
    with pytest.raises(InputError):
        Budget.parse(json.loads('{"params": "NaN"}'))
