"""Report data behind the figures (graph flow, loss curves, latency), the HTML page and the Markdown."""

import base64
import json
import math
import re

import pytest
import torch
from support import Residual

import flowprune
import flowprune.zoo
from flowprune.cli import main
from flowprune.report.tables import agreement_matrix

FIGURES = ("fig-graph", "fig-bars", "fig-agreement", "fig-curves")


def test_graph_edge_flow_is_the_energy_share_and_sums_to_one_at_the_output():
    torch.manual_seed(0)
    m = Residual().eval()
    x = torch.randn(5, 4)
    rep = flowprune.analyze(m, [x], criteria=("flow",), progress=False)
    g = rep.data["graph"]
    with torch.no_grad():
        z = m.fc(x)
    share = float((z * z).sum() / ((z * z).sum() + (x * x).sum()))
    into_output = [f for u, v, f in g["edges"] if v == "output"]
    assert sum(into_output) == pytest.approx(1.0)
    fc = next(n["id"] for n in g["nodes"] if n["path"] == "fc")
    add = next(n["id"] for n in g["nodes"] if n["kind"] == "add")
    edge = {(u, v): f for u, v, f in g["edges"]}
    assert (
        edge[(fc, add)]
        == pytest.approx(share, rel=1e-5)
        == pytest.approx(rep.candidates[0]["flow"], rel=1e-5)
    )
    assert {n["id"]: n["candidate"] for n in g["nodes"]}[fc] == "fc:branch"


def test_loss_curves_start_at_zero_and_follow_the_exact_ablation(pruned_report):
    report, _ = pruned_report
    curves = {(c["strategy"], c["criterion"]): c for c in report.data["curves"]}
    assert {
        ("one_shot", "loss"),
        ("one_shot", "flow"),
        ("quadratic", "taylor2"),
        ("greedy", "loss"),
    } <= set(curves)
    best = min(r["loss"] for r in report.candidates)
    for c in curves.values():
        assert c["k"][0] == 0 and c["loss"][0] == 0.0 and c["params_removed"][0] == 0
        assert len(c["k"]) == len(c["loss"]) == len(c["removals"]) + 1 == 5
    for key in (("one_shot", "loss"), ("greedy", "loss")):
        assert curves[key]["loss"][1] == pytest.approx(
            best, abs=1e-6
        )  # the single cheapest removal
        p = curves[key]["params_removed"]
        assert all(a <= b for a, b in zip(p, p[1:]))  # nested sets
    g = curves[("greedy", "loss")]
    assert (
        g["loss"][2] <= curves[("one_shot", "loss")]["loss"][2] + 1e-6
    )  # exact re-scoring never loses at k = 2
    with pytest.raises(flowprune.InputError, match="unknown strategy"):
        report.loss_curves(2, strategies=("sideways",))


def test_prune_records_latency_before_and_after(pruned_report):
    report, _ = pruned_report
    lat = report.plans[0]["latency"]
    assert lat["before"] > 0 and lat["after"] > 0 and lat["batch"] == 2
    n = len(report.plans)
    report.plan(
        flowprune.Budget(count=1), latency=True
    )  # a plan made from the report: timed on request
    assert len(report.plans) == n + 1 and report.plans[-1]["latency"]["after"] > 0
    del report.plans[n:]  # the shared report keeps its single plan
    with pytest.raises(flowprune.PlanError, match="read from JSON"):
        flowprune.Report.from_json(report.to_json()).record_latency(None)


def _figures(page: str) -> dict[str, str]:
    return {
        m.group(1): base64.b64decode(m.group(2)).decode()
        for m in re.finditer(
            r'<img class="figure" id="([\w-]+)"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page
        )
    }


def test_html_is_self_contained_with_every_figure(pruned_report):
    report, path = pruned_report
    page = path.read_text()
    figs = _figures(page)
    assert set(figs) == set(FIGURES)
    for name, svg in figs.items():
        assert "<svg" in svg and svg.count("<path") > 20, name  # text is drawn as paths too
    outside = re.sub(r"base64,[^\"]+", "", page)
    assert "http://" not in outside and "https://" not in outside  # no network
    assert "ms →" in page and "rewritten ΔL" in page  # the plan with latency before → after
    # vertex colours follow the chosen criterion
    assert _figures(report.to_html(criterion="random"))["fig-graph"] != figs["fig-graph"]


def test_flow_graph_names_the_layers_under_their_vertices(pruned_report):
    from flowprune.report.figures import flow_graph

    report, _ = pruned_report
    fig = flow_graph(report.data["graph"], report.scores("loss"), "loss")
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_position()[0] for t in ax.texts}
    assert {"layers.0", "layers.1", "layers.2", "layers.3"} <= set(labels)
    xs = [labels[f"layers.{i}"] for i in range(4)]
    assert xs == sorted(xs)  # in depth order, left to right
    assert {"input:input_ids", "output"} <= set(labels)


def test_markdown_has_the_same_tables(pruned_report):
    report, path = pruned_report
    md = report.to_markdown()
    for title in (
        "## Plans",
        "## Candidates",
        "## Agreement with the exact loss change",
        "## Agreement between criteria (Spearman)",
        "## Loss against number of removals",
    ):
        assert title in md, title
    page = path.read_text()
    c = report.data["curves"][0]
    cell = f"{c['loss'][2]:.4g}"
    assert cell in md and cell in page  # one curve value in both renderings


def test_agreement_matrix_is_symmetric_with_unit_diagonal(pruned_report):
    report, _ = pruned_report
    names, M = agreement_matrix(report.candidates, report.criteria)
    assert "loss" in names and len(names) >= 5
    finite = torch.isfinite(torch.tensor(M))
    assert torch.allclose(torch.tensor(M)[finite], torch.tensor(M).T[finite])
    assert all(M[i, i] == 1.0 for i in range(len(names)))
    k = names.index("kl")
    assert M[names.index("loss"), k] == pytest.approx(1.0)  # distill loss == KL


def test_report_command_writes_html_and_markdown_and_json(pruned_report, tmp_path, capsys):
    report, _ = pruned_report
    report.to_json(tmp_path / "r.json")
    assert (
        main(
            [
                "report",
                str(tmp_path / "r.json"),
                "--html",
                str(tmp_path / "r.html"),
                "--md",
                str(tmp_path / "r.md"),
                "--criterion",
                "flow",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["written"] == {"html": str(tmp_path / "r.html"), "md": str(tmp_path / "r.md")}
    assert out["curves"] == json.loads(report.to_json())["curves"]
    page = (tmp_path / "r.html").read_text()
    assert set(_figures(page)) == set(FIGURES)
    assert _figures(page)["fig-graph"] == _figures(report.to_html(criterion="flow"))["fig-graph"]
    assert main(["report", str(tmp_path / "r.json"), "--criterion", "fisher"]) == 2  # not computed
    assert "--criterion fisher: this report has" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "r.md")]) == 2  # not JSON
    assert "is not a flowprune report" in capsys.readouterr().err
    bad = {
        "plan.json": '{"removals": []}',
        "thin.json": '{"candidates": [], "criteria": [], "model_class": "X"}',
        "schema.json": json.dumps({**json.loads(report.to_json()), "schema": "2"}),
    }
    for name, text in bad.items():  # JSON, but not a report this version can read
        (tmp_path / name).write_text(text)
        assert main(["report", str(tmp_path / name), "--html", str(tmp_path / "x.html")]) == 2, name
        assert "is not a flowprune report" in capsys.readouterr().err
    for argv in (
        ["report", str(tmp_path / "r.json"), "--criterion", "nope"],
        ["analyze", "--curves", "-1"],
    ):
        with pytest.raises(
            SystemExit
        ) as e:  # usage errors: argparse, exit code 2 too, before any work
            main(argv)
        assert e.value.code == 2


def test_version_and_zoo_json(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert (
        e.value.code == 0
        and capsys.readouterr().out.strip() == f"flowprune {flowprune.__version__}"
    )
    assert main(["zoo", "--json"]) == 0
    zoo = json.loads(capsys.readouterr().out)
    assert len(zoo) == len(flowprune.zoo.ZOO) and "zoo:llama" in [z["model"] for z in zoo]


def test_a_report_without_finite_scores_renders_without_bars(pruned_report):
    report, _ = pruned_report
    d = json.loads(report.to_json())
    for r in d["candidates"]:
        for c in d["criteria"]:
            r[c] = None
    page = flowprune.Report.from_json(json.dumps(d)).to_html()
    assert "fig-graph" in page and "fig-bars" not in page


def test_old_reports_without_graph_or_curves_still_render(pruned_report):
    report, _ = pruned_report
    d = json.loads(report.to_json())
    d["schema"] = 1
    del d["graph"], d["curves"]
    old = flowprune.Report.from_json(json.dumps(d))
    page = old.to_html()
    assert (
        set(_figures(page)) == {"fig-bars", "fig-agreement"} and "analyze again to draw it" in page
    )
    assert not math.isnan(old.base_loss)
