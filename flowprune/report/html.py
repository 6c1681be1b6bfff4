"""The report as one self-contained HTML page: matplotlib figures embedded as SVG data URIs (no network,
no script libraries), the Markdown report's tables, and a few lines of script that record whether every
figure decoded (``data-figures`` on <body>; the browser test reads it)."""

from __future__ import annotations

import base64
import html
from typing import Callable

from . import figures, tables

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1280px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; } .note { color: #666; font-size: 13px; }
img.figure { display: block; max-width: none; background: white; }
"""

SCRIPT = """
document.documentElement.dataset.errors = '';
window.addEventListener('error', e => {
  document.documentElement.dataset.errors += (e.message || 'resource') + ';';
}, true);
window.addEventListener('load', () => {
  const figs = [...document.querySelectorAll('img.figure')].map(i => {
    const r = i.getBoundingClientRect();
    return {id: i.id, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight,
            x: r.left + window.scrollX, y: r.top + window.scrollY, cw: r.width, ch: r.height};
  });
  document.body.dataset.figures = JSON.stringify(figs);
  document.body.dataset.height = String(document.documentElement.scrollHeight);
});
"""

DESCRIBE = {
    "graph": "Vertices are layer calls and merges (add, mul, cat), in depth order from left to right; edge "
    "width is the share of the output's energy that flows along the edge (one forward pass); a "
    "vertex's colour is the rank of the candidate whose removal removes it (dark: removed first; "
    "grey: no candidate). Residual connections arc over the blocks they skip.",
    "bars": "Every criterion's score for every candidate, in the order the model runs them. Higher means more "
    "important (removed later).",
    "agreement": "Spearman rank correlation between every pair of criteria. The row 'loss' is the exact "
    "loss change: the closer a criterion is to 1 there, the better it predicts what removal "
    "really costs.",
    "curves": "Calibration loss change after removing k candidates, chosen by each strategy (one_shot: "
    "lowest scores of one criterion; quadratic: minimum of the gate-Hessian prediction; greedy: "
    "exact re-scoring after every removal), measured exactly through the gates. Left: against k; "
    "right: against the fraction of parameters removed.",
}


def _img(fig_id: str, svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode()).decode()
    return (
        f'<div class="scroll"><img class="figure" id="{fig_id}" alt="{html.escape(alt)}" '
        f'src="data:image/svg+xml;base64,{data}"></div>'
    )


def _table(t: tables.Table) -> str:
    head, rows = t
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f'<div class="scroll"><table><tr>{th}</tr>{body}</table></div>'


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _figure(fig_id: str, make: Callable, *args) -> str:
    return _img(fig_id, figures.to_svg(make(*args)), fig_id)


def render(d: dict, descriptions: dict[str, str], criterion: str | None = None) -> str:
    """HTML text of report data ``d`` (``Report.data``); vertices are coloured by ``criterion``
    (default: the report's ranking criterion).

    >>> page = render(report.data, DESCRIPTIONS)
    """
    crit = criterion or d.get("rank_by") or (d["criteria"][0] if d["criteria"] else None)
    rows = d["candidates"]
    scores = {r["id"]: r.get(crit) for r in rows} if crit else None
    parts = [
        f"<h1>flowprune report: {html.escape(d['model_class'])}</h1>",
        _table(tables.summary(d)),
    ]
    if d["plans"]:
        parts.append(_section("Plan", _table(tables.plans(d)), "plans"))
    if d.get("graph"):
        note = (
            ""
            if any(f is not None for _, _, f in d["graph"]["edges"])
            else '<p class="note">No flow analysis in this report (criteria without "flow"): all edges drawn alike.</p>'
        )
        parts.append(
            _section(
                "Flow graph",
                f'<p class="note">{DESCRIBE["graph"]}</p>{note}'
                + _figure("fig-graph", figures.flow_graph, d["graph"], scores, crit),
                "graph",
            )
        )
    else:
        parts.append(
            _section(
                "Flow graph",
                '<p class="note">This report has no graph (written by flowprune '
                "0.1 before reports stored it): analyze again to draw it.</p>",
                "graph",
            )
        )
    if rows and figures.drawable(rows, d["criteria"]):
        parts.append(
            _section(
                "Scores along depth",
                f'<p class="note">{DESCRIBE["bars"]}</p>'
                + _figure("fig-bars", figures.criteria_bars, rows, d["criteria"]),
                "bars",
            )
        )
    names, M = tables.agreement_matrix(rows, d["criteria"])
    if len(names) >= 2:
        body = f'<p class="note">{DESCRIBE["agreement"]}</p>' + _figure(
            "fig-agreement", figures.agreement_heatmap, names, M
        )
        if d["fidelity"]:
            body += "<h3>Agreement with the exact loss change</h3>" + _table(tables.fidelity(d))
        parts.append(_section("Agreement between criteria", body, "agreement"))
    if d.get("curves"):
        parts.append(
            _section(
                "Loss against number of removals",
                f'<p class="note">{DESCRIBE["curves"]}</p>'
                + _figure("fig-curves", figures.loss_curves, d["curves"], d["total_params"])
                + _table(tables.curves(d)),
                "curves",
            )
        )
    else:
        parts.append(
            _section(
                "Loss against number of removals",
                '<p class="note">Not measured: call '
                "<code>report.loss_curves(k)</code> on a live report, or pass <code>--curves K</code> "
                "to <code>flowprune analyze</code>/<code>prune</code>.</p>",
                "curves",
            )
        )
    parts.append(_section("Candidates", _table(tables.candidates(d)), "candidates"))
    legend = "".join(
        f"<li><code>{html.escape(c)}</code>: {html.escape(descriptions.get(c, ''))}</li>"
        for c in d["criteria"]
    )
    parts.append(
        _section(
            "Criteria",
            f"<p>Higher = more important (removed last).</p><ul>{legend}</ul>",
            "criteria",
        )
    )
    title = html.escape(f"flowprune report: {d['model_class']}")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
