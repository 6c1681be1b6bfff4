"""The report as Markdown: the same tables as the HTML report, without the figures."""

from __future__ import annotations

from . import tables

SECTIONS = (
    ("Summary", tables.summary),
    ("Plans", tables.plans),
    ("Candidates", tables.candidates),
    ("Agreement with the exact loss change", tables.fidelity),
    ("Agreement between criteria (Spearman)", tables.agreement),
    ("Loss against number of removals", tables.curves),
)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s):
        return str(s).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]


def render(d: dict, descriptions: dict[str, str]) -> str:
    """Markdown text of report data ``d`` (``Report.data``).

    >>> text = render(report.data, DESCRIPTIONS)
    """
    lines = [f"# flowprune report: {d['model_class']}"]
    for title, make in SECTIONS:
        head, rows = make(d)
        if rows:
            lines += ["", f"## {title}", ""] + _table(head, rows)
    lines += [
        "",
        "Criteria (higher = more important, removed last): "
        + "; ".join(f"`{c}` {descriptions.get(c, '')}" for c in d["criteria"]),
    ]
    return "\n".join(lines) + "\n"
