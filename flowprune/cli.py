"""The ``flowprune`` command.

    flowprune analyze                      # trace the built-in tiny Llama and list its candidates
    flowprune analyze --model resnet_basic --json
    flowprune analyze --model llama --remove 2 --out out/   # also apply a plan, write plan.json

Exit codes: 0 success, 2 bad input (one line on stderr naming the cause), 1 unexpected error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._version import __version__
from .errors import FlowpruneError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowprune", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"flowprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="trace a model, list its removable branches and layers")
    a.add_argument("--model", default="llama",
                   help="a built-in example model (see `flowprune zoo`); default: llama (4-layer, random weights)")
    a.add_argument("--remove", type=int, default=0, metavar="K",
                   help="also remove the last K layer candidates and report the smaller model (default 0)")
    a.add_argument("--out", type=Path, default=None, help="directory for plan.json (written atomically)")
    a.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    sub.add_parser("zoo", help="list the built-in example models")
    return p


def _analyze(args: argparse.Namespace) -> int:
    import torch

    from . import apply, trace
    from ._tree import tensor_leaves
    from .graph.trace import call_model
    from .zoo import ZOO

    if args.model not in ZOO:
        raise FlowpruneError(f"unknown model {args.model!r}; choose one of: {', '.join(ZOO)}")
    entry = ZOO[args.model]
    model, inputs = entry.build(), entry.inputs()
    t0 = time.perf_counter()
    graph = trace(model, inputs)
    seconds = time.perf_counter() - t0
    cands = graph.candidates()
    result = {"model": args.model, "vertices": graph.nx.number_of_nodes(), "edges": graph.nx.number_of_edges(),
              "params": graph.total_params, "flops": graph.total_flops, "trace_seconds": round(seconds, 4),
              "candidates": [{"id": c.id, "kind": c.kind, "params": c.params, "flops": c.flops} for c in cands]}
    plan = None
    if args.remove:
        layers = [c.id for c in cands if c.kind == "layer"]
        if args.remove > len(layers):
            raise FlowpruneError(f"--remove {args.remove}: the model has only {len(layers)} layer candidates")
        plan = graph.plan(layers[-args.remove:])
        small = apply(model, plan)
        with torch.no_grad():
            a, b = (tensor_leaves(call_model(m, inputs))[0] for m in (model, small))
        result["plan"] = json.loads(plan.to_json())
        result["params_after"] = sum(p.numel() for p in small.parameters())
        result["output_change"] = float((a - b).norm() / a.norm().clamp_min(1e-12))
        if args.out:
            plan.to_json(args.out / "plan.json")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.model}: {entry.note}")
    print(f"{result['vertices']} vertices, {result['edges']} edges, {result['params']:,} params, "
          f"{result['flops'] / 1e6:.2f} MFLOPs per forward on the example; traced in {seconds * 1e3:.0f} ms")
    print(graph.summary())
    if plan is not None:
        print(plan)
        print(f"params {result['params']:,} -> {result['params_after']:,}; "
              f"relative change of the output: {result['output_change']:.3f}")
        if args.out:
            print(f"wrote {args.out / 'plan.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "zoo":
            from .zoo import ZOO

            for name, e in ZOO.items():
                print(f"{name:<18} {e.family:<8} {e.note}")
            return 0
        return _analyze(args)
    except FlowpruneError as e:
        print(f"flowprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
