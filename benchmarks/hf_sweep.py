"""Every model type of transformers' config mapping, built tiny and pushed through flowprune.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice python benchmarks/hf_sweep.py          # all types
    python benchmarks/hf_sweep.py --types bloom mamba t5                          # a few

For each type: ``AutoConfig.for_model(type)`` shrunk by one generic override function (hidden sizes
32, 2 layers, 4 heads, intermediate 64, ... in the config and every sub-config), random weights built
with ``AutoModelForCausalLM`` (else ``AutoModel``), example inputs synthesised from the model's
``main_input_name`` and forward signature; then trace -> candidates -> for every candidate
``apply(model, plan([id]))`` compared with the gated model on the same inputs (max abs diff <= 1e-5).
Stages counted: buildable (config + model + one plain forward), traced, with candidates, all rewrites
equal.  A rewrite that runs but differs from the gated model is the worst outcome and is listed first.
Each type runs under a 60 s alarm.  Results go to ``benchmarks/results/hf_sweep.md``; a JSON-lines
cache (``--cache``) lets an interrupted sweep resume.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import signal
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

import flowprune
from flowprune._tree import tensor_leaves
from flowprune.graph.trace import call_model

TOL = 1e-5
SEQ = 8
# generic size overrides: attribute name -> value (ints only; applied wherever the name exists)
HIDDEN = (
    "hidden_size",
    "d_model",
    "n_embd",
    "embed_dim",
    "model_dim",
    "embedding_size",
    "word_embed_proj_dim",
    "d_embed",
    "emb_dim",
    "hidden_dim_size",
    "encoder_hidden_size",
    "projection_dim",
    "text_embed_dim",
    "vision_embed_dim",
    "dim",
)
FFN = (
    "intermediate_size",
    "ffn_dim",
    "n_inner",
    "d_ff",
    "ffn_hidden_size",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "hidden_dim",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "dim_feedforward",
    "decoder_intermediate_size",
    "encoder_intermediate_size",
    "mlp_dim",
    "inner_dim",
)
HEADS = (
    "num_attention_heads",
    "n_head",
    "n_heads",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "num_decoder_attention_heads",
    "attention_heads",
)
KV_HEADS = (
    "num_key_value_heads",
    "num_kv_heads",
    "n_kv_heads",
    "multi_query_group_num",
    "kv_heads",
)
HEAD_DIM = (
    "head_dim",
    "d_kv",
    "kv_channels",
    "attention_head_size",
    "qk_nope_head_dim",
    "v_head_dim",
    "qk_rope_head_dim",
    "d_head",
    "rotary_dim",
)
LAYERS = (
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
    "depth",
    "n_layers_decoder",
    "num_text_layers",
)
EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
# lists: per-stage sizes of hierarchical vision models
LIST_SIZES = {
    "hidden_sizes": 8,
    "embed_dims": 8,
    "dims": 8,
    "channels": 8,
    "encoder_hidden_sizes": 8,
    "neck_hidden_sizes": 8,
    "embed_dim": 8,
}


def shrink(cfg: Any, seen: set | None = None, layers_only: bool = False, ssm: bool = False) -> None:
    """Shrink ``cfg`` (a PretrainedConfig) and its sub-configs in place to a tiny model (``layers_only``:
    only depth, experts and vocabulary, for configs whose widths are tied by rules the generic
    override breaks; ``ssm``: also tie state-space head sizes to the shrunk width)."""
    from transformers import PretrainedConfig

    seen = seen if seen is not None else set()
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    d = cfg.__dict__

    def put(names: tuple, value: int, only_if_larger: bool = True) -> None:
        for n in names:
            v = d.get(n)
            if (
                isinstance(v, int)
                and not isinstance(v, bool)
                and v > 0
                and (v > value or not only_if_larger)
            ):
                setattr(cfg, n, value)

    if not layers_only:
        put(HIDDEN, 32)
        put(FFN, 64)
        put(HEADS, 4)
        put(KV_HEADS, 2)
        put(HEAD_DIM, 8)
    n0 = d.get("num_hidden_layers")
    put(LAYERS, 2)
    put(EXPERTS, 4)
    put(("num_experts_per_tok", "moe_topk", "num_selected_experts", "top_k"), 2)
    put(("num_labels",), 2)
    for n, base in LIST_SIZES.items():
        v = d.get(n)
        if (
            not layers_only
            and isinstance(v, (list, tuple))
            and v
            and all(isinstance(x, int) for x in v)
        ):
            setattr(cfg, n, type(v)(base * 2**i for i in range(len(v))))
    for n in ("depths", "depth", "num_layers"):  # per-stage depths
        v = d.get(n)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) for x in v):
            setattr(cfg, n, type(v)(1 for _ in v))
    for n in (
        ("num_heads", "num_attention_heads") if not layers_only else ()
    ):  # per-stage heads: 1 divides all
        v = d.get(n)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) for x in v):
            setattr(cfg, n, type(v)(1 for _ in v))
    # state-space mixers: heads x head_dim must equal expand x hidden (Mamba2, Bamba, FalconH1, ...)
    for exp, nh, hd, ng in (
        ("expand", "num_heads", "head_dim", "n_groups"),
        ("mamba_expand", "mamba_n_heads", "mamba_d_head", "mamba_n_groups"),
    ):
        if ssm and all(isinstance(d.get(k), int) for k in (exp, nh, hd, "hidden_size")):
            setattr(cfg, nh, min(d[nh], 4))
            setattr(cfg, hd, d[exp] * d["hidden_size"] // d[nh])
            if isinstance(d.get(ng), int):
                setattr(cfg, ng, 1)
    if isinstance(d.get("vocab_size"), int) and d["vocab_size"] > 128:
        ids = [
            v
            for k, v in d.items()
            if (k.endswith("token_id") or k.endswith("token_index"))
            and isinstance(v, int)
            and not isinstance(v, bool)
        ]
        cfg.vocab_size = max([128] + [i + 1 for i in ids if i < d["vocab_size"]])
    n = d.get("num_hidden_layers")
    if (
        isinstance(n0, int) and isinstance(n, int) and n < n0
    ):  # per-layer lists (layer_types, rope thetas)
        for k, v in list(d.items()):
            if isinstance(v, (list, tuple)) and len(v) == n0 and not k.startswith("_"):
                try:
                    setattr(cfg, k, type(v)(v[:n]))
                except Exception:  # a strict config refusing it: not a per-layer list
                    pass
    for v in list(d.values()):
        if isinstance(v, PretrainedConfig):
            shrink(v, seen, layers_only, ssm)
        elif isinstance(v, dict) and "model_type" in v:
            pass  # a sub-config kept as a dict is rebuilt by the model; left as it is


MAX_PARAMS = 60_000_000  # a layers-only build larger than this is not tried (memory, time)


def _task_classes(model_type: str) -> list[str]:
    """Model classes registered for ``model_type`` in any auto mapping (base model first)."""
    import transformers.models.auto.modeling_auto as ma

    names = ["MODEL_MAPPING_NAMES"] + sorted(
        n for n in dir(ma) if n.startswith("MODEL_FOR") and n.endswith("_NAMES")
    )
    out = [getattr(ma, n).get(model_type) for n in names]
    return list(dict.fromkeys(c for c in out if isinstance(c, str)))


def _instantiate(cfg: Any) -> torch.nn.Module:
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    last: Exception | None = None
    for cls in (AutoModelForCausalLM, AutoModel):
        for kw in ({"attn_implementation": "eager"}, {}):
            try:
                return cls.from_config(cfg, **kw)
            except ValueError as e:  # not a causal LM / no eager attention: try the next
                last = e
    # no AutoModel entry (sub-model configs, task-only models): the class another auto mapping names
    for name in _task_classes(cfg.model_type):
        cls = getattr(transformers, name, None)
        if cls is not None:
            cfg._attn_implementation = "eager"
            return cls(cfg)
    raise last  # type: ignore[misc]


def build(
    model_type: str, layers_only: bool = False, ssm: bool = False
) -> tuple[torch.nn.Module, Any]:
    """A tiny randomly initialised model of ``model_type`` in eval mode, and its config."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    shrink(cfg, layers_only=layers_only, ssm=ssm)
    if layers_only:
        with torch.device("meta"):
            n = sum(p.numel() for p in _instantiate(cfg).parameters())
        if n > MAX_PARAMS:
            raise MemoryError(f"{n / 1e6:.0f}M parameters with only the depth shrunk")
    torch.manual_seed(0)
    return _instantiate(cfg).eval(), cfg


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for c in (
        cfg,
        getattr(cfg, "vision_config", None),
        getattr(cfg, "audio_config", None),
        getattr(cfg, "encoder", None),
        getattr(cfg, "text_config", None),
    ):
        for n in names:
            v = getattr(c, n, None) if c is not None else None
            if v is not None:
                return v
    return default


def inputs_for(model: torch.nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Example inputs from ``main_input_name`` and the forward signature, plainest first: the main input
    alone, then with the other modality (dual encoders such as CLIP need both)."""
    params = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    gen = torch.Generator().manual_seed(0)
    vocab = _get(cfg, "vocab_size", default=128) or 128
    special = {v for k, v in vars(cfg).items() if k.endswith("token_id") and isinstance(v, int)}
    ids = torch.randint(3, max(4, min(int(vocab), 100)), (2, SEQ), generator=gen)
    ids = torch.where(
        torch.isin(ids, torch.tensor(sorted(special) or [-1])), torch.full_like(ids, 5), ids
    )

    def pixels() -> torch.Tensor:
        size = _get(cfg, "image_size", "input_size", default=224)
        size = tuple(size)[-2:] if isinstance(size, (list, tuple)) else (int(size), int(size))
        ch = _get(cfg, "num_channels", "in_channels", "num_input_channels", default=3)
        return torch.randn(2, int(ch), *size, generator=gen)

    x: dict[str, Any] = {}
    if main == "pixel_values":
        x["pixel_values"] = pixels()
    elif main == "input_features":
        mel = _get(cfg, "num_mel_bins", default=None)
        if mel is not None:
            frames = 2 * int(_get(cfg, "max_source_positions", default=1500))
            x["input_features"] = torch.randn(2, int(mel), frames, generator=gen)
        else:
            feat = int(_get(cfg, "feature_size", "input_feat_per_channel", default=80))
            ch = int(_get(cfg, "input_channels", default=1))
            x["input_features"] = torch.randn(2, 64, feat * ch, generator=gen)
    elif main == "input_values":  # raw audio
        x["input_values"] = torch.randn(2, 4000, generator=gen)
    elif main == "input_ids" or main not in params:
        x["input_ids"] = ids
    else:
        raise NotImplementedError(f"main input '{main}' is not synthesised")
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        x["decoder_input_ids"] = ids[:, :4]
    if "use_cache" in params:
        x["use_cache"] = False
    options = [x]
    if "pixel_values" in params and "pixel_values" not in x:
        options.append({**x, "pixel_values": pixels()})
    if "input_ids" in params and "input_ids" not in x:
        options.append({**x, "input_ids": ids})
    return options


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("over the per-model time limit")


def _floats(model: torch.nn.Module, x: Any) -> list[torch.Tensor]:
    torch.manual_seed(
        0
    )  # models that sample in eval (ViTMAE's patch masking, ViLT, VITS): same draws
    with torch.no_grad():
        return [t for t in tensor_leaves(call_model(model, x)) if t.is_floating_point()]


def _why(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:240]}"


def _buildable(model_type: str, r: dict) -> tuple[torch.nn.Module, dict]:
    """Model and inputs on which one plain forward runs: tiny widths first, then only the depth shrunk."""
    first: Exception | None = None
    stage = "config"
    for layers_only, ssm in ((False, False), (False, True), (True, False)):
        try:
            r["stage"] = "config"
            model, cfg = build(model_type, layers_only, ssm)
            r["class"] = type(model).__name__
            r["params"] = sum(p.numel() for p in model.parameters())
            r["stage"] = "forward"
            options = inputs_for(model, cfg)
            for i, x in enumerate(options):
                try:
                    _floats(model, x)
                    r["shrink"] = (
                        "layers only" if layers_only else "tiny" + (" (ssm heads)" if ssm else "")
                    )
                    return model, x
                except Timeout:
                    raise
                except Exception:
                    if i == len(options) - 1:
                        raise
        except Timeout:
            raise
        except Exception as e:
            if first is None:
                first, stage = e, r["stage"]
            if "Unrecognized configuration class" in str(e):
                break  # a sub-config type: no model class to build
    r["stage"] = stage
    raise first  # type: ignore[misc]


def run_one(model_type: str) -> dict[str, Any]:
    """Stages reached by one model type, with counts and the first failure's cause."""
    r: dict[str, Any] = {"type": model_type, "stage": "config"}
    try:
        model, x = _buildable(model_type, r)
        r["stage"] = "trace"
        r["buildable"] = True
        graph = flowprune.trace(model, x)
        r["traced"] = True
        r["stage"] = "candidates"
        cands = graph.candidates()
        r["candidates"] = len(cands)
        if not cands:
            r["stage"] = "done"
            return r
        r["stage"] = "gates"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gates = flowprune.Gates(graph).__enter__()
        r["dropped"] = len(gates.failed)
        r["equal"], r["differ"], r["raised"] = 0, [], []
        r["stage"] = "rewrites"
        try:
            for c in gates.candidates:
                with gates.removed([c.id]):
                    gated = _floats(model, x)
                try:
                    got = _floats(flowprune.apply(model, graph.plan([c.id])), x)
                except Timeout:
                    raise
                except Exception as e:
                    r["raised"].append(f"{c.id}: {_why(e)}")
                    continue
                if len(got) != len(gated) or any(a.shape != b.shape for a, b in zip(gated, got)):
                    r["differ"].append(f"{c.id}: output structure differs")
                    continue
                d = max(
                    [(a - b).abs().max().item() for a, b in zip(gated, got) if a.numel()] or [0.0]
                )
                if d <= TOL or (
                    math.isnan(d)
                    and all(torch.equal(a.isnan(), b.isnan()) for a, b in zip(gated, got))
                ):
                    r["equal"] += 1
                else:
                    r["differ"].append(f"{c.id}: max abs diff {d:.3g}")
        finally:
            gates.__exit__(None, None, None)
        r["stage"] = "done"
    except Timeout as e:
        r["error"] = _why(e)
    except Exception as e:
        r["error"] = _why(e)
        r["where"] = traceback.extract_tb(e.__traceback__)[-1].filename.rsplit("site-packages/", 1)[
            -1
        ]
    return r


def skip_reason(r: dict) -> str | None:
    """Why a type is not buildable here (external files, optional packages), else None."""
    e = r.get("error", "")
    if r.get("buildable"):
        return None
    for key in (
        "requires the",
        "pip install",
        "No module named",
        "is not installed",
        "backend",
        "timm",
        "from_pretrained",
        "does not appear to have a file",
        "Can't load",
        "offline",
    ):
        if key.lower() in e.lower():
            return "needs an optional package / external files"
    if "Unrecognized configuration class" in e:
        return "sub-config type: no AutoModel class"
    if r["stage"] == "config":
        return "no tiny model: config/model construction failed"
    if r["stage"] in ("inputs", "forward"):
        return "no example input synthesised / plain forward failed"
    return "other"


def table(results: list[dict], command: str) -> str:
    """The Markdown report."""
    n = len(results)
    buildable = [r for r in results if r.get("buildable")]
    traced = [r for r in buildable if r.get("traced")]
    with_c = [r for r in traced if r.get("candidates")]
    all_eq = [
        r
        for r in with_c
        if r.get("stage") == "done" and not r.get("differ") and not r.get("raised")
    ]
    differ = [r for r in with_c if r.get("differ")]

    def pct(a: list, b: list) -> str:
        return f"{100 * len(a) / max(len(b), 1):.1f} %"

    checked = sum(
        r.get("equal", 0) + len(r.get("differ", [])) + len(r.get("raised", [])) for r in with_c
    )
    lines = [
        "# Hugging Face sweep: every model type, tiny random config",
        "",
        f"Command: `{command}`  ",
        f"transformers {__import__('transformers').__version__}, "
        f"torch {torch.__version__}, tolerance {TOL} (max abs diff, rewritten vs gated, same inputs).",
        "",
        "| stage | model types | share |",
        "|---|---:|---:|",
        f"| config types in `CONFIG_MAPPING_NAMES` | {n} | |",
        f"| buildable (tiny config + model + one forward) | {len(buildable)} | {pct(buildable, results)} of all |",
        f"| traced | {len(traced)} | {pct(traced, buildable)} of buildable |",
        f"| with candidates | {len(with_c)} | {pct(with_c, traced)} of traced |",
        f"| every single-candidate rewrite == gated | {len(all_eq)} | "
        f"{pct(all_eq, with_c)} of with candidates |",
        f"| some rewrite != gated (wrong model) | {len(differ)} | |",
        "",
        f"Candidates checked: {checked}, "
        f"equal: {sum(r.get('equal', 0) for r in with_c)}, rewrite raised: "
        f"{sum(len(r.get('raised', [])) for r in with_c)}, "
        f"differ: {sum(len(r.get('differ', [])) for r in with_c)}, "
        f"dropped by the gates' self-check: {sum(r.get('dropped', 0) for r in with_c)}.",
        "",
    ]
    if differ:
        lines += ["## Rewrite != gated (wrong model)", ""]
        lines += [
            f"- `{r['type']}` ({r.get('class')}): " + "; ".join(r["differ"][:4]) for r in differ
        ] + [""]
    fails = [r for r in buildable if not r.get("traced")]
    lines += (
        ["## Buildable but not traced", ""]
        + [f"- `{r['type']}` ({r.get('class')}): {r.get('error')}" for r in fails]
        + [""]
    )
    slow = [r for r in with_c if "Timeout" in (r.get("error") or "")]
    lines += ["## Traced, rewrite check cut by the per-model time limit", ""]
    lines += [
        f"- `{r['type']}` ({r.get('class')}): {r.get('equal', 0)} of {r['candidates']} candidates checked "
        f"equal" + (f", {len(r['differ'])} differ" if r.get("differ") else "")
        for r in slow
    ] + [""]
    raised = [r for r in with_c if r.get("raised") or (r.get("error") and r not in slow)]
    lines += ["## Traced, some rewrite raised (a clear error, not a wrong model)", ""]
    lines += [
        f"- `{r['type']}` ({r.get('class')}): "
        + "; ".join((r.get("raised") or [])[:3] + ([r["error"]] if r.get("error") else []))
        for r in raised
    ]
    lines += [""]
    nocand = [r for r in traced if not r.get("candidates")]
    lines += [
        "## Traced, no candidates",
        "",
        ", ".join(f"`{r['type']}`" for r in nocand) or "none",
        "",
    ]
    skipped = [r for r in results if not r.get("buildable")]
    lines += ["## Not buildable here", "", "| type | reason | error |", "|---|---|---|"]
    lines += [
        f"| `{r['type']}` | {skip_reason(r)} | {r.get('error', '').replace('|', '/')[:160]} |"
        for r in skipped
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="*", help="model types (default: all)")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument(
        "--cache", default="/tmp/hf_sweep.jsonl", help="JSON lines of finished types (resume)"
    )
    ap.add_argument(
        "--rerun", nargs="*", default=[], help="types to run again, replacing their cached results"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hf_sweep.md"))
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    types = args.types or sorted(CONFIG_MAPPING_NAMES)
    done: dict[str, dict] = {}
    cache = Path(args.cache)
    if cache.exists() and not args.types:
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r["type"] not in args.rerun:
                done[r["type"]] = r
    signal.signal(signal.SIGALRM, _alarm)
    for i, t in enumerate(types):
        if t in done:
            continue
        t0 = time.time()
        signal.alarm(args.timeout)
        try:
            r = run_one(t)
        except Timeout as e:  # raised outside run_one's own handlers
            r = {"type": t, "stage": "timeout", "error": _why(e)}
        finally:
            signal.alarm(0)
        r["seconds"] = round(time.time() - t0, 1)
        done[t] = r
        if not args.types:
            with cache.open("a") as f:
                f.write(json.dumps(r) + "\n")
        ok = r.get("stage") == "done" and not r.get("differ") and not r.get("raised")
        status = (
            "OK"
            if ok
            else f"DIFF {r['differ'][:2]}"
            if r.get("differ")
            else r.get("error") or f"raised {r.get('raised', [])[:2]}"
        )
        print(
            f"[{i + 1}/{len(types)}] {t}: {r.get('candidates', '-')} cands, {r['seconds']}s {status}",
            flush=True,
        )
        gc.collect()
    results = [done[t] for t in types]
    command = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice python benchmarks/hf_sweep.py" + (
        f" --types {' '.join(args.types)}" if args.types else ""
    )
    md = table(results, command)
    if not args.types:
        Path(args.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
