"""Channel groups over every Hugging Face model type, built tiny with random weights.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/channel_sweep.py --limit 150
    python benchmarks/channel_sweep.py --types bert,gpt2,t5

Model and inputs come from ``hf_sweep`` (``_buildable``: the tiny config, else the ssm variant, else
depth-only; inputs from ``inputs_for``).  Then ``channel_groups(model, inputs)`` with warnings
captured.  Recorded per type: groups, prunable groups, kinds, groups failing the mask-vs-slice check
(with the first reason), non-prunable reasons, time, or the exception if ``channel_groups`` itself
raised (it should never raise on a model whose forward runs).  Each type runs under an alarm
(``--timeout``, default 20 s).  Per-type results go to ``--json`` (default /tmp/channel_sweep.json),
merged with what is there, so ``--start K`` resumes a sweep.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import hf_sweep  # noqa: E402
import torch  # noqa: E402


def _where(e: BaseException) -> str:
    """The innermost flowprune frame of the traceback (file:line function), else the last frame."""
    tb = traceback.extract_tb(e.__traceback__)
    fp = [f for f in tb if "/flowprune/" in f.filename]
    f = (fp or tb)[-1]
    return f"{f.filename.rsplit('/flowprune/', 1)[-1]}:{f.lineno} {f.name}"


def run_one(model_type: str) -> dict[str, Any]:
    from flowprune.channels import channel_groups

    r: dict[str, Any] = {"type": model_type, "stage": "config"}
    try:
        model, x = hf_sweep._buildable(model_type, r)
    except hf_sweep.Timeout as e:
        r["error"] = hf_sweep._why(e)
        r["stage"] = "timeout (build)"
        return r
    except BaseException as e:  # noqa: BLE001
        r["error"] = hf_sweep._why(e)
        return r
    r["buildable"] = True
    r["stage"] = "channel_groups"
    t0 = time.time()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            gs = channel_groups(model, x)
        r["seconds_cg"] = round(time.time() - t0, 2)
        r["warnings"] = len(w)
        r["stage"] = "done"
        groups = list(gs)
        r["groups"] = len(groups)
        r["prunable"] = sum(1 for g in groups if g.prunable)
        r["kinds"] = dict(Counter(g.kind for g in groups))
        r["prunable_kinds"] = dict(Counter(g.kind for g in groups if g.prunable))
        r["failed"] = len(gs.failed)
        if gs.failed:
            gid, why = next(iter(gs.failed.items()))
            r["failed_first"] = f"{gid}: {str(why)[:200]}"
            r["failed_ids"] = list(gs.failed)[:10]
        r["reasons"] = dict(Counter(str(g.reason)[:60] for g in groups if not g.prunable))
    except hf_sweep.Timeout as e:
        r["seconds_cg"] = round(time.time() - t0, 2)
        r["stage"] = "timeout (channel_groups)"
        r["error"] = hf_sweep._why(e)
    except BaseException as e:  # noqa: BLE001  the important failure
        r["seconds_cg"] = round(time.time() - t0, 2)
        r["stage"] = "raised"
        r["raised"] = hf_sweep._why(e)
        r["where"] = _where(e)
    return r


def table(results: list[dict], command: str) -> str:
    n = len(results)
    b = [r for r in results if r.get("buildable")]
    raised = [r for r in b if r.get("stage") == "raised"]
    cg_to = [r for r in b if r.get("stage") == "timeout (channel_groups)"]
    done = [r for r in b if r.get("stage") == "done"]
    pr = [r for r in done if r.get("prunable")]
    heads = [r for r in done if r.get("prunable_kinds", {}).get("heads")]
    heads_any = [r for r in done if r.get("kinds", {}).get("heads")]
    failing = [r for r in done if r.get("failed")]
    lines = [
        "# Channel-group sweep: Hugging Face model types, tiny random configs",
        "",
        f"Command: `{command}`  ",
        f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        "",
        "| | model types |",
        "|---|---:|",
        f"| tried | {n} |",
        f"| buildable (model + one forward) | {len(b)} |",
        f"| channel_groups raised | {len(raised)} |",
        f"| channel_groups over the time limit | {len(cg_to)} |",
        f"| channel_groups finished | {len(done)} |",
        f"| with >=1 prunable group | {len(pr)} |",
        f"| with >=1 prunable heads group | {len(heads)} (any heads group: {len(heads_any)}) |",
        f"| with groups failing the check | {len(failing)} "
        f"({sum(r['failed'] for r in failing)} groups) |",
        "",
        f"Groups: {sum(r.get('groups', 0) for r in done)}, prunable: "
        f"{sum(r.get('prunable', 0) for r in done)}; channel_groups time total "
        f"{sum(r.get('seconds_cg', 0) for r in b):.0f} s.",
        "",
        "## Failures (channel_groups raised / timed out / groups failing the check)",
        "",
        "| type | class | what | detail |",
        "|---|---|---|---|",
    ]
    for r in raised:
        lines.append(
            f"| `{r['type']}` | {r.get('class')} | raised | "
            f"{r['raised'].replace('|', '/')[:200]} (at {r.get('where')}) |"
        )
    for r in cg_to:
        lines.append(
            f"| `{r['type']}` | {r.get('class')} | timeout | after {r.get('seconds_cg')} s |"
        )
    for r in failing:
        lines.append(
            f"| `{r['type']}` | {r.get('class')} | {r['failed']} failed check | "
            f"{r.get('failed_first', '').replace('|', '/')[:200]} |"
        )
    tot: Counter = Counter()
    types_with: Counter = Counter()
    for r in done:
        for k, v in r.get("reasons", {}).items():
            tot[k] += v
            types_with[k] += 1
    lines += [
        "",
        "## Top 15 non-prunable reasons (all types)",
        "",
        "| reason (60 chars) | groups | types |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k.replace('|', '/')} | {v} | {types_with[k]} |" for k, v in tot.most_common(15)]
    lines += ["", "## Per type", "", "| type | groups | prunable | kinds | failed | s |"]
    lines += ["|---|---:|---:|---|---:|---:|"]
    for r in done:
        lines.append(
            f"| `{r['type']}` | {r['groups']} | {r['prunable']} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(r['kinds'].items()))} | {r['failed']} | "
            f"{r.get('seconds_cg')} |"
        )
    nb = [r for r in results if not r.get("buildable")]
    lines += ["", f"## Not buildable ({len(nb)})", ""]
    lines += [f"- `{r['type']}` ({r.get('stage')}): {(r.get('error') or '')[:120]}" for r in nb]
    return "\n".join(lines) + "\n"


def main() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="", help="comma-separated model types (default: all)")
    ap.add_argument("--start", type=int, default=0, help="index into the sorted types to start at")
    ap.add_argument("--limit", type=int, default=0, help="at most this many types (0: all)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds per type (alarm)")
    ap.add_argument("--json", default="/tmp/channel_sweep.json")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --json")
    ap.add_argument(
        "--report-all",
        action="store_true",
        help="table over every type in --json, not just this run",
    )
    ap.add_argument("--report-only", action="store_true", help="run nothing: the table of --json")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    types = (
        [t for t in args.types.split(",") if t]
        if args.types
        else sorted(CONFIG_MAPPING_NAMES)[args.start :]
    )
    if args.limit:
        types = types[: args.limit]
    if args.report_only:
        types, args.report_all = [], True
    out = Path(args.json)
    store: dict[str, dict] = {}
    if out.exists() and not args.fresh:
        store = {r["type"]: r for r in json.loads(out.read_text())}
    signal.signal(signal.SIGALRM, hf_sweep._alarm)
    for i, t in enumerate(types):
        t0 = time.time()
        signal.alarm(args.timeout)
        try:
            r = run_one(t)
        except hf_sweep.Timeout as e:
            r = {"type": t, "stage": "timeout", "error": hf_sweep._why(e)}
        finally:
            signal.alarm(0)
        r["seconds"] = round(time.time() - t0, 1)
        store[t] = r
        out.write_text(json.dumps(list(store.values()), indent=1))
        if r.get("stage") == "done":
            st = f"{r['groups']} groups, {r['prunable']} prunable {r['prunable_kinds']}" + (
                f", FAILED {r['failed']}: {r.get('failed_first', '')[:100]}" if r["failed"] else ""
            )
        elif r.get("stage") == "raised":
            st = f"RAISED {r['raised'][:160]} at {r['where']}"
        else:
            st = f"{r.get('stage')}: {(r.get('error') or '')[:100]}"
        print(f"[{args.start + i}] {t}: {r['seconds']}s {st}", flush=True)
        gc.collect()
    results = list(store.values()) if args.report_all else [store[t] for t in types]
    results.sort(key=lambda r: r["type"])
    command = "python benchmarks/channel_sweep.py " + " ".join(sys.argv[1:])
    print(table(results, command))


if __name__ == "__main__":
    main()
