"""The ``flowprune`` command.

    flowprune prune                       # the shipped tiny LM on CPython's docs: rank, plan, prune, save
    flowprune prune --model DIR_OR_HUB_ID --data wikitext2 --budget 0.25 --criterion loss \\
                    --strategy greedy --fill mean --out pruned/
    flowprune analyze --model zoo:resnet_basic --json
    flowprune report out/report.json --html report.html --md report.md
    flowprune zoo --json

Every command takes --json (one JSON document on stdout instead of tables).  analyze and prune share
their flags and write report.json, report.md and report.html into --out.

Exit codes: 0 success; 2 bad input or usage (one line on stderr naming the cause and the fix);
1 unexpected error (a Python traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ._version import __version__
from .analyses import CRITERIA, MATRIX_PREFERENCE
from .errors import FlowpruneError, InputError
from .saving import META
from .score.units import UNIT_CRITERIA
from .solve import DEFAULT_STRATEGY, FILLS, KINDS, STRATEGIES


def default_model() -> Path:
    """The tiny Llama trained on CPython's docs that ships with flowprune (``data/tiny-llama-pydocs``):
    installed as the package ``flowprune._assets``, or beside the package in a source checkout."""
    checkout = Path(__file__).resolve().parents[1] / "data" / "tiny-llama-pydocs"
    if checkout.is_dir():
        return checkout
    from importlib.resources import files

    return Path(str(files("flowprune._assets") / "tiny-llama-pydocs"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="a directory written by save_pretrained, a Hugging Face hub id, or zoo:NAME "
        "(default: the shipped tiny LM)",
    )
    p.add_argument(
        "--data",
        default="python-docs",
        help="python-docs (CPython's documentation, offline), wikitext2 (needs the hub), or "
        "text:PATH (a UTF-8 file); default python-docs",
    )
    p.add_argument(
        "--loss",
        default="distill",
        choices=("distill", "lm"),
        help="calibration loss (default distill)",
    )
    p.add_argument(
        "--num-samples", type=_positive, default=32, help="calibration sequences (default 32)"
    )
    p.add_argument(
        "--seq-len", type=_positive, default=128, help="tokens per sequence (default 128)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("flowprune-out"),
        help="output directory (default flowprune-out)",
    )
    p.add_argument(
        "--criteria",
        default="flow,loss,taylor2",
        help="analyses computed for the report (default flow,loss,taylor2)",
    )
    p.add_argument(
        "--curves",
        type=_count,
        default=6,
        metavar="K",
        help="measure loss against 1..K removals per strategy for the report (default 6; 0: none)",
    )
    _json(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _count(text: str) -> int:
    """argparse type: a whole number ≥ 0 (checked before any work starts)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def _finite(text: str) -> float:
    """argparse type: a finite number (no nan/inf)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of tables"
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``flowprune: error: ...``) and exit code 2, like every other
    bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"flowprune: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flowprune",
        description="Trace, score and prune neural networks without fine-tuning.",
        epilog="Exit codes: 0 success, 2 bad input, 1 unexpected error.",
    )
    p.add_argument("--version", action="version", version=f"flowprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prune", help="score, plan, rewrite and save a smaller model")
    _common(pr)
    pr.add_argument(
        "--budget",
        type=_finite,
        default=0.25,
        help="how much to remove, in --unit (default 0.25 of the parameters)",
    )
    pr.add_argument(
        "--unit",
        default="params",
        choices=("params", "flops", "count", "loss"),
        help="params/flops: fraction to remove; count: number of removals; loss: max loss increase",
    )
    pr.add_argument(
        "--criterion",
        default=None,
        choices=tuple(dict.fromkeys((*CRITERIA, *UNIT_CRITERIA))),
        help="ranking criterion (default loss; with --granularity channels one of "
        f"{', '.join(UNIT_CRITERIA)}, default magnitude)",
    )
    pr.add_argument(
        "--granularity",
        default="layers",
        choices=("layers", "channels"),
        help="layers: remove residual branches and layers (default); channels: slice filters, "
        "neurons and attention heads out of layers (--budget is then the fraction of units)",
    )
    pr.add_argument(
        "--scope",
        default="layer",
        choices=("layer", "global"),
        help="with --granularity channels: --budget is the fraction of units removed from every "
        "group (layer, default), or of the model's parameters, taken from one ranking of all units "
        "by score per saved parameter (global)",
    )
    pr.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        choices=tuple(STRATEGIES),
        help="; ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values())
        + f" (default {DEFAULT_STRATEGY})",
    )
    pr.add_argument(
        "--fill",
        default="zeros",
        choices=(*FILLS, "obs"),
        help="what replaces a removed branch (default zeros); with --granularity channels: zeros, "
        "mean (bias compensation) or obs (least-squares refit of the consumers' kept columns)",
    )
    pr.add_argument(
        "--kind",
        default="all",
        choices=KINDS,
        help="remove only sublayers (branch), only whole layers, or both (default all)",
    )
    an = sub.add_parser(
        "analyze", help="score every candidate; write report.json, report.md and report.html"
    )
    _common(an)
    rp = sub.add_parser("report", help="render a report.json as HTML and/or Markdown")
    rp.add_argument("report", type=Path, help="a report.json written by analyze or prune")
    rp.add_argument(
        "--html", type=Path, default=None, help="write the HTML report (figures embedded) here"
    )
    rp.add_argument("--md", type=Path, default=None, help="write the Markdown report here")
    rp.add_argument(
        "--criterion",
        default=None,
        choices=tuple(CRITERIA),
        help="colour the flow graph by this criterion (default: the report's ranking)",
    )
    _json(rp)
    zo = sub.add_parser("zoo", help="list the built-in example models (use as --model zoo:NAME)")
    _json(zo)
    return p


def _load(args: argparse.Namespace) -> tuple[Any, Any, list, list | None, str]:
    """(model, tokenizer, calibration batches, held-out batches or None, description)."""
    import os

    from . import data as fdata
    from .saving import load_pretrained

    if args.model and args.model.startswith("zoo:"):
        from .zoo import ZOO

        name = args.model[4:]
        if name not in ZOO:
            raise InputError(f"unknown zoo model {name!r}; choose one of: {', '.join(ZOO)}")
        e = ZOO[name]
        return e.build(), None, [e.inputs()], None, f"zoo:{name} ({e.note})"
    if args.data.startswith("text:") and not Path(args.data[5:]).is_file():
        raise InputError(
            f"text file {args.data[5:]!r} does not exist: pass --data text:PATH with a UTF-8 file"
        )
    if args.data not in ("python-docs", "wikitext2") and not args.data.startswith("text:"):
        raise InputError(f"--data {args.data!r}: use python-docs, wikitext2 or text:PATH")
    src = args.model or str(default_model())
    try:
        from transformers import AutoTokenizer

        # a folder flowprune saved (it holds flowprune.json) is verified and its plans replayed; any other
        # is a plain Hugging Face checkpoint (folder or hub id)
        model = load_pretrained(src) if os.path.isfile(os.path.join(src, META)) else _hf(src)
        tok = AutoTokenizer.from_pretrained(src)
    except FlowpruneError:
        raise
    except Exception as e:
        raise InputError(
            f"could not load model {src!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"offline, pass a local directory or omit --model for the shipped tiny LM"
        ) from e
    kw = dict(seq_len=args.seq_len, num_samples=args.num_samples)
    if args.data == "python-docs":
        calib, held = fdata.python_docs(tok, "train", **kw), fdata.python_docs(tok, "test", **kw)
    elif args.data == "wikitext2":
        calib, held = fdata.wikitext(tok, "train", **kw), fdata.wikitext(tok, "test", **kw)
    else:
        calib = fdata.text_files([args.data[5:]], tok, "train", **kw)
        held = fdata.text_files([args.data[5:]], tok, "test", **kw)
    return model.eval(), tok, calib, held, src


def _hf(src: str):
    """A Hugging Face checkpoint (folder or hub id) with the class its config names (a causal LM, an
    encoder, ...), else AutoModelForCausalLM, else AutoModel."""
    import transformers

    from .saving import _quiet_transformers

    config = transformers.AutoConfig.from_pretrained(src)
    named = [getattr(transformers, a, None) for a in getattr(config, "architectures", None) or []]
    with _quiet_transformers():
        if named and named[0] is not None:
            return named[0].from_pretrained(src)
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(src)
        except ValueError:  # the config has no causal-LM class
            return transformers.AutoModel.from_pretrained(src)


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a Hugging Face causal LM (next-token logits, so held-out perplexity and
    ``--loss lm`` apply); decided from its class before any work."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = {
        n
        for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for n in ((v,) if isinstance(v, str) else v)
    }
    return type(model).__name__ in names


def _check_request(args: argparse.Namespace) -> None:
    """Everything that can be checked before a model is loaded or any work starts (exit 2 if wrong)."""
    from .api import _criteria
    from .solve import Budget, check_strategy

    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file: pass a directory (it is created if missing)")
    _criteria([c.strip() for c in args.criteria.split(",") if c.strip()])
    if args.command != "prune":
        return
    model_dir = args.out / "model"
    if model_dir.exists() and not (model_dir / META).is_file():
        raise InputError(
            f"{model_dir} exists and was not written by flowprune: pass another --out, or move it"
        )
    if args.granularity == "channels":
        args.criterion = args.criterion or "magnitude"
        if args.criterion not in UNIT_CRITERIA:
            raise InputError(
                f"--granularity channels ranks units by one of {', '.join(UNIT_CRITERIA)}; "
                f"{args.criterion} is a criterion for branches and layers"
            )
        if args.fill not in ("zeros", "mean", "obs"):
            raise InputError(
                f"--granularity channels takes --fill zeros, mean or obs (got {args.fill})"
            )
        if args.unit != "params" or not 0 < args.budget < 1:
            raise InputError(
                f"--granularity channels takes --budget as a fraction, 0 < budget < 1 (of the units "
                f"of every group, or with --scope global of the parameters); got --budget "
                f"{args.budget} --unit {args.unit}"
            )
        return
    if args.fill == "obs":
        raise InputError(
            "--fill obs refits the consumers of removed units: use --granularity channels"
        )
    args.criterion = args.criterion or "loss"
    if args.unit == "count" and (args.budget < 1 or args.budget != int(args.budget)):
        raise InputError(
            f"--unit count needs a whole number of removals, e.g. --budget 2 (got {args.budget})"
        )
    args.budget_obj = Budget(
        **{
            "params": {"params": args.budget},
            "flops": {"flops": args.budget},
            "count": {"count": int(args.budget)},
            "loss": {"max_loss_increase": args.budget},
        }[args.unit]
    )
    matrix = args.criterion if args.criterion in MATRIX_PREFERENCE else None
    check_strategy(args.strategy, args.criterion, tuple(CRITERIA), matrix)


def _table(report, n: int = 40) -> str:
    crit = [c for c in ("loss", "taylor2", "flow", "shortgpt", "magnitude") if c in report.criteria]
    rows = sorted(report.candidates, key=lambda r: r["rank"])[:n]
    head = f"{'rank':>4}  {'candidate':<40} {'params':>9} " + " ".join(f"{c:>10}" for c in crit)
    return "\n".join(
        [head]
        + [
            f"{r['rank']:>4}  {r['id']:<40} {r['params']:>9,} "
            + " ".join(f"{r[c]:>10.4g}" for c in crit)
            for r in rows
        ]
    )


def _prune(args: argparse.Namespace) -> int:
    from . import prune
    from .data import batch_size
    from .plan import signed
    from .saving import save_pretrained
    from .score import perplexity, similarity

    t0 = time.perf_counter()
    _check_request(args)
    model, tok, calib, held, src = _load(args)
    lm = _check_lm(model, args)
    if args.granularity == "channels":
        return _prune_channels(args, model, tok, calib, held, src, lm, t0)
    small, report = prune(
        model,
        calib,
        args.budget_obj,
        criterion=args.criterion,
        strategy=args.strategy,
        loss=args.loss,
        fill=args.fill,
        kind=args.kind,
        progress=not args.no_progress,
        criteria=[c.strip() for c in args.criteria.split(",") if c.strip()],
    )
    plan = small.flowprune_plans[-1]
    out: dict[str, Any] = {
        "model": src,
        "plan": json.loads(plan.to_json()),
        "last": report.to_dict()["plans"][-1],
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in small.parameters()),
    }
    if held is not None and lm:
        out["heldout_ppl_before"] = perplexity(model, held)
        out["heldout_ppl_after"] = perplexity(small, held)
    elif held is not None:  # no next-token logits: how close the pruned model's outputs stay
        out["heldout_similarity"] = similarity(small, model, held)
    args.out.mkdir(parents=True, exist_ok=True)
    if hasattr(small, "save_pretrained"):
        save_pretrained(
            small, args.out / "model", tokenizer=tok, overwrite=True
        )  # --out is ours to rewrite
    plan.to_json(args.out / "plan.json")
    _write_reports(report, args)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(
        f"model: {src}\ncalibration: {args.data}, {sum(batch_size(b) for b in calib)}"
        f" samples; loss {args.loss}\n\nCandidates, least important first (criterion columns: higher = keep):"
    )
    print(_table(report))
    print(f"\n{plan}")
    last = report.plans[-1]
    print(
        f"\nparams {out['params_before']:,} -> {out['params_after']:,} "
        f"({signed(out['params_before'] - out['params_after'], out['params_before'])}); calibration loss change: "
        f"predicted {last['predicted'] if last['predicted'] is None else round(last['predicted'], 4)}, "
        f"measured {last['measured']:.4f} (gated), {last['measured_rewritten']:.4f} (rewritten, fill={args.fill})"
    )
    if "heldout_ppl_after" in out:
        print(
            f"held-out perplexity {out['heldout_ppl_before']:.3f} -> {out['heldout_ppl_after']:.3f}"
        )
    elif "heldout_similarity" in out:
        print(
            f"held-out similarity to the original (cosine of mean-pooled outputs): {out['heldout_similarity']:.4f}"
        )
    print(
        f"wrote {args.out}/model, plan.json, report.json, report.md, report.html in {out['seconds']} s"
    )
    return 0


def _prune_channels(
    args: argparse.Namespace,
    model: Any,
    tok: Any,
    calib: list,
    held: Any,
    src: str,
    lm: bool,
    t0: float,
) -> int:
    """--granularity channels: unit scores, units sliced out, consumers refitted (--fill)."""
    from . import apply, trace
    from .channels.magnitude import select_units
    from .plan import signed
    from .saving import save_pretrained
    from .score import perplexity, similarity
    from .score.units import select_budget, select_obs_greedy, unit_scores

    graph = trace(model, calib[0])
    groups = graph.channel_groups()
    loss = "lm" if args.loss == "lm" else "distill"
    if args.criterion == "obs" and args.scope == "layer":  # greedy, seeing what the refit recovers
        removed = select_obs_greedy(model, groups.prunable(), calib, args.budget)
    elif args.scope == "layer":
        scores = unit_scores(graph, calib, [args.criterion], loss=loss)[args.criterion]
        removed = select_units(groups.prunable(), scores, args.budget, scope="layer")
    else:
        scores = unit_scores(graph, calib, [args.criterion], loss=loss)[args.criterion]
        removed = select_budget(
            groups.prunable(),
            scores,
            params=args.budget * graph.total_params,
            normalise=args.criterion in ("magnitude", "l1"),
        )
    plan = graph.plan(units=removed, fill=args.fill)
    small = apply(model, plan, data=calib if args.fill != "zeros" else None)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    out: dict[str, Any] = {
        "model": src,
        "groups": [g.to_dict() | {"members": len(g.members)} for g in groups],
        "failed": groups.failed,
        "removed": removed,
        "params_before": before,
        "params_after": after,
        "flops_before": plan.flops_before,
        "flops_removed": plan.flops_removed,
    }
    if held is not None and lm:
        out["heldout_ppl_before"] = perplexity(model, held)
        out["heldout_ppl_after"] = perplexity(small, held)
    elif held is not None:
        out["heldout_similarity"] = similarity(small, model, held)
    args.out.mkdir(parents=True, exist_ok=True)
    if hasattr(small, "save_pretrained"):
        save_pretrained(small, args.out / "model", tokenizer=tok, overwrite=True)
    plan.to_json(args.out / "plan.json")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"model: {src}\n\nChannel groups ({len(groups.prunable())} prunable):")
    for g in groups:
        n = len(removed.get(g.id, ()))
        state = f"-{n} of {g.units}" if g.prunable else f"kept: {g.reason}"
        print(f"  {g.id:<48} {g.kind:<8} {state}")
    for gid, why in groups.failed.items():
        print(f"  {gid:<48} dropped by the check: {why}")
    print(
        f"\nparams {before:,} -> {after:,} ({signed(before - after, before)}); "
        f"FLOPs {signed(plan.flops_removed, plan.flops_before)}"
    )
    if "heldout_ppl_after" in out:
        print(
            f"held-out perplexity {out['heldout_ppl_before']:.3f} -> {out['heldout_ppl_after']:.3f}"
        )
    elif "heldout_similarity" in out:
        print(f"held-out similarity to the original: {out['heldout_similarity']:.4f}")
    print(
        f"wrote {args.out}/plan.json" + (" and model" if hasattr(small, "save_pretrained") else "")
    )
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from . import analyze

    _check_request(args)
    model, _, calib, _, src = _load(args)
    _check_lm(model, args)
    criteria = tuple(c.strip() for c in args.criteria.split(",") if c.strip())
    report = analyze(model, calib, loss=args.loss, criteria=criteria, progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_reports(report, args)
    if args.json:
        print(report.to_json())
        return 0
    print(f"model: {src}\n")
    print(_table(report))
    if report.fidelity:
        print(
            "\nagreement with the exact loss change (Spearman): "
            + ", ".join(f"{k} {v['spearman']:.2f}" for k, v in report.fidelity.items())
        )
    print(f"\nwrote {args.out}/report.json, report.md and report.html")
    return 0


def _check_lm(model: Any, args: argparse.Namespace) -> bool:
    """Whether held-out perplexity applies; ``--loss lm`` on a model without next-token logits is refused
    here, before the analysis."""
    if args.model and args.model.startswith("zoo:"):
        return False
    lm = is_causal_lm(model)
    if not lm and args.loss == "lm":
        raise InputError(
            f"--loss lm needs a causal LM, and {type(model).__name__} has no next-token logits: "
            f"use --loss distill (the default: stay close to the original model's outputs)"
        )
    return lm


def _write_reports(report, args: argparse.Namespace) -> None:
    """Loss curves (``--curves``), then report.json, report.md and report.html in ``--out``."""
    if args.curves:
        report.loss_curves(args.curves)
    report.to_json(args.out / "report.json")
    report.to_markdown(args.out / "report.md")
    report.to_html(args.out / "report.html")


def _report(args: argparse.Namespace) -> int:
    from .report import Report

    if not args.report.is_file():
        raise InputError(
            f"{args.report} does not exist: pass the report.json written by analyze or prune"
        )
    try:
        report = Report.from_json(args.report)
    except (ValueError, KeyError) as e:
        raise InputError(
            f"{args.report} is not a flowprune report ({type(e).__name__}: {e}); "
            f"pass the report.json written by analyze or prune"
        ) from e
    if args.criterion is not None and args.criterion not in report.criteria:
        raise InputError(
            f"--criterion {args.criterion}: this report has {', '.join(report.criteria)}"
        )
    written = {}
    if args.html:
        report.to_html(args.html, criterion=args.criterion)
        written["html"] = str(args.html)
    if args.md:
        report.to_markdown(args.md)
        written["md"] = str(args.md)
    if args.json:
        print(
            json.dumps(
                {"report": str(args.report), "written": written, **report.to_dict()}, indent=1
            )
        )
    elif written:
        print("\n".join(f"wrote {p}" for p in written.values()))
    else:
        print(report.to_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "zoo":
            from .zoo import ZOO

            if args.json:
                print(
                    json.dumps(
                        [
                            {"model": f"zoo:{n}", "family": e.family, "note": e.note}
                            for n, e in ZOO.items()
                        ],
                        indent=1,
                    )
                )
            else:
                for name, e in ZOO.items():
                    print(f"zoo:{name:<18} {e.family:<8} {e.note}")
            return 0
        return {"prune": _prune, "analyze": _analyze, "report": _report}[args.command](args)
    except FlowpruneError as e:
        print(f"flowprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
