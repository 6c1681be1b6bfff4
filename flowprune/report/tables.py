"""The report's tables as (header, rows) of strings, shared by the Markdown and the HTML renderings so
both show the same numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from ..plan import signed

Table = tuple[list[str], list[list[str]]]


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.2f} ms"


def summary(d: dict) -> Table:
    rows = [
        ["model", d["model_class"]],
        ["loss", f"{d['loss']} = {fmt(d['base_loss'])}"],
        ["calibration samples", fmt(d["num_samples"])],
        ["parameters", fmt(d["total_params"])],
        ["FLOPs per forward", fmt(d["total_flops"])],
        ["candidates", fmt(len(d["candidates"]))],
        ["flowprune", d["version"]],
    ]
    rows += [[f"time: {k}", f"{v:.2f} s"] for k, v in d.get("timings", {}).items()]
    return ["", "value"], rows


def plans(d: dict) -> Table:
    """Each plan with parameters, FLOPs and (after prune) latency before → after."""
    P, F = d["total_params"], d["total_flops"]
    head = [
        "strategy",
        "criterion",
        "fill",
        "removals",
        "params before → after",
        "FLOPs before → after",
        "latency before → after",
        "predicted ΔL",
        "measured ΔL",
        "rewritten ΔL",
    ]
    rows = []
    for p in d["plans"]:
        lat = p.get("latency") or {}
        rows.append(
            [
                p["strategy"],
                p["criterion"],
                p.get("fill", "zeros"),
                ", ".join(p["removals"]) or "–",
                f"{P:,} → {P - p['params_removed']:,} ({signed(p['params_removed'], P, '−')})",
                f"{F:,} → {F - p['flops_removed']:,} ({signed(p['flops_removed'], F, '−')})",
                f"{_ms(lat.get('before'))} → {_ms(lat.get('after'))}" if lat else "–",
                fmt(p.get("predicted")),
                fmt(p.get("measured")),
                fmt(p.get("measured_rewritten")),
            ]
        )
    return head, rows


def candidates(d: dict) -> Table:
    crit = d["criteria"]
    head = ["rank", "id", "kind", "params", "FLOPs"] + list(crit)
    rows = [
        [str(r["rank"]), r["id"], r["kind"], fmt(r["params"]), fmt(r["flops"])]
        + [fmt(r.get(c)) for c in crit]
        for r in sorted(d["candidates"], key=lambda r: r["rank"])
    ]
    return head, rows


def fidelity(d: dict) -> Table:
    head = ["criterion", "Spearman", "Kendall"]
    return head, [[c, fmt(v["spearman"]), fmt(v["kendall"])] for c, v in d["fidelity"].items()]


def agreement_matrix(rows: list[dict], criteria: list[str]) -> tuple[list[str], np.ndarray]:
    """Spearman correlation between every pair of criteria (those with at least 3 finite, varying values)."""
    cols = {}
    for c in criteria:
        v = np.array([r.get(c) if r.get(c) is not None else np.nan for r in rows], dtype=float)
        if np.isfinite(v).sum() >= 3 and np.ptp(v[np.isfinite(v)]) > 0:
            cols[c] = v
    names = list(cols)
    M = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ok = np.isfinite(cols[a]) & np.isfinite(cols[b])
            if ok.sum() >= 3 and np.ptp(cols[a][ok]) > 0 and np.ptp(cols[b][ok]) > 0:
                M[i, j] = (
                    1.0 if i == j else float(stats.spearmanr(cols[a][ok], cols[b][ok]).statistic)
                )
    return names, M


def agreement(d: dict) -> Table:
    names, M = agreement_matrix(d["candidates"], d["criteria"])
    return [""] + names, [
        [a] + [fmt(float(M[i, j])) for j in range(len(names))] for i, a in enumerate(names)
    ]


def curves(d: dict) -> Table:
    """ΔL after k removals (rows) for each strategy / criterion (columns)."""
    cs = d.get("curves") or []
    if not cs:
        return [], []
    K = max(len(c["k"]) for c in cs)
    head = ["removals"] + [f"{c['strategy']} / {c['criterion']}" for c in cs]
    return head, [
        [str(k)] + [fmt(c["loss"][k]) if k < len(c["loss"]) else "–" for c in cs] for k in range(K)
    ]
