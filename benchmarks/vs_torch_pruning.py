"""flowprune's channel groups next to Torch-Pruning 1.6.1 (``pip install torch-pruning==1.6.1``).

What it measures, in one run (markdown on stdout):

1. *Parity* on ResNet-18 (torchvision's architecture and module names, 3x224x224, seeded init): 50 % of
   the channels of every layer by L2 magnitude, ``fc`` output kept.  Torch-Pruning (``BasePruner`` +
   ``MagnitudeImportance(p=2)``) and flowprune (``channel_groups`` + ``unit_magnitude`` +
   ``select_units`` + ``slices_for``/``slice_``) prune deep copies of one model; MACs and parameters are
   counted for both with ``tp.utils.count_ops_and_params``, and the remaining weights are compared
   tensor for tensor (identical kept channels).
2. ResNet-56 (CIFAR, 3x32x32): global L1 magnitude (``MagnitudeImportance(p=1)``, ``global_pruning``),
   one step, the smallest ratio (bisection) reaching >= 2.11x fewer MACs, both tools at that ratio;
   then the zoo CNNs (ResNets, VGG, DenseNet, MobileNetV2) at 50 % L2, kept channels compared.
3. *Coverage and speed*: every ``flowprune.zoo.ZOO`` model: flowprune groups (found / prunable / failed
   the check), time to find them (without and with the check), one forward; Torch-Pruning's
   ``DependencyGraph().build_dependency`` + ``get_all_groups`` under an alarm (``--tp-timeout``, 30 s by
   default so that the run stays under 10 minutes: on the GQA decoders Torch-Pruning 1.6.1 loops
   forever in ``get_pruning_group`` (rooted at ``k_proj``; still running after 400 s), so every such
   model costs the whole timeout; see VainF/Torch-Pruning#527).
4. *GQA*: tiny Llama and Qwen3 (hidden 64, 8 query / 2 key-value heads, 2 layers): flowprune removes
   one of the two key-value groups of every layer (sliced == masked), Torch-Pruning's LLM recipe
   (``num_heads``, ``prune_num_heads``, ``head_pruning_ratio=0.5``, ``lm_head`` ignored) is tried, and
   flowprune's pruned model is saved and reloaded with plain ``from_pretrained``.

    python benchmarks/vs_torch_pruning.py [--quick]   # --quick skips the ResNet-18 parity
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import shlex
import signal
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import flowprune  # noqa: E402
from flowprune.channels import UnitGates, channel_groups, slice_, slices_for  # noqa: E402
from flowprune.channels.magnitude import magnitude_scores, select_units  # noqa: E402
from flowprune.zoo import ZOO  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # pragma: no cover
    sys.exit("needs torch-pruning: pip install torch-pruning==1.6.1 (the 'bench' extra)")


# --------------------------------------------------------------------------- models
def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock (same module names); ``functional_relu``: the last ReLU is
    ``F.relu`` as in Torch-Pruning's CIFAR ResNets (its op counter then does not count it)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        functional_relu: bool = False,
    ):
        super().__init__()
        self.functional_relu = functional_relu
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity) if self.functional_relu else self.relu(out + identity)


def _layer(cin: int, cout: int, blocks: int, stride: int, fr: bool = False) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(
        BasicBlock(cin, cout, stride, down, fr),
        *[BasicBlock(cout, cout, functional_relu=fr) for _ in range(blocks - 1)],
    )


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():  # torchvision's init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return model


class ResNet18(nn.Module):
    """torchvision.models.resnet18 (architecture and state_dict names), 1000 classes."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 2, 1)
        self.layer2 = _layer(64, 128, 2, 2)
        self.layer3 = _layer(128, 256, 2, 2)
        self.layer4 = _layer(256, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet56(nn.Module):
    """CIFAR ResNet-56 as in Torch-Pruning's reproduce/engine/models/cifar/resnet_tiny.py (3 stages of 9
    basic blocks, 16/32/64 channels, 1x1-conv shortcuts, AvgPool2d(8)), 10 classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _layer(16, 16, 9, 1, True)
        self.layer2 = _layer(16, 32, 9, 2, True)
        self.layer3 = _layer(32, 64, 9, 2, True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _seeded(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = cls()
    with torch.no_grad():  # non-trivial BN so that BN scales take part in the ranking
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return m.eval()


# --------------------------------------------------------------------------- pruning both ways
def tp_prune(model, x, p, ratio, global_pruning):
    small = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(
        small,
        x,
        importance=tp.importance.MagnitudeImportance(p=p),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=[small.fc],
    )
    pruner.step()
    return small


def fp_prune(model, x, p, ratio, scope, gs=None):
    gs = gs if gs is not None else channel_groups(model, x)
    scores = magnitude_scores(model, gs.prunable(), p=p)
    removed = select_units(gs, scores, ratio, scope)
    slices, attrs = slices_for(model, gs, removed)
    return slice_(copy.deepcopy(model), slices, attrs), gs, removed


def count(model, x):
    macs, params = tp.utils.count_ops_and_params(model, x)
    return macs, params


def same_weights(a: nn.Module, b: nn.Module) -> tuple[bool, str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False, "different state_dict names"
    bad = [k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])]
    return (not bad), (
        f"{len(bad)} tensors differ, first {bad[0]}" if bad else f"all {len(sa)} identical"
    )


def table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_m(v: float) -> str:
    return f"{v / 1e6:.6f} M"


def parity_resnet18() -> None:
    print("\n## Parity: ResNet-18, 50 % of every layer's channels by L2 magnitude (fc kept)\n")
    x = torch.randn(1, 3, 224, 224)
    model = _seeded(ResNet18)
    m0, p0 = count(model, x)
    t0 = time.perf_counter()
    small_tp = tp_prune(model, x, 2, 0.5, False)
    t_tp = time.perf_counter() - t0
    t0 = time.perf_counter()
    small_fp, gs, removed = fp_prune(model, x, 2, 0.5, "layer")
    t_fp = time.perf_counter() - t0
    mt, pt = count(small_tp, x)
    mf, pf = count(small_fp, x)
    ok, why = same_weights(small_tp, small_fp)
    rows = [
        ["before (both)", f"{m0 / 1e9:.6f} G", fmt_m(p0), "", ""],
        ["Torch-Pruning 1.6.1", f"{mt / 1e9:.6f} G", fmt_m(pt), f"{m0 / mt:.2f}x", f"{t_tp:.1f} s"],
        ["flowprune", f"{mf / 1e9:.6f} G", fmt_m(pf), f"{m0 / mf:.2f}x", f"{t_fp:.1f} s"],
    ]
    print(table(["model", "MACs", "params", "speed-up", "pruning time (1 CPU thread)"], rows))
    print(
        "\nTorch-Pruning's published ResNet-18 numbers: 1.822178 G -> 0.487203 G MACs, "
        "11.689512 M -> 3.055880 M params.\n"
    )
    print(
        f"flowprune: {len(gs)} groups ({len(gs.prunable())} prunable), {len(removed)} pruned. "
        f"Kept channels identical to Torch-Pruning (remaining weights compared tensor for tensor): "
        f"**{'yes' if ok else 'NO'}** ({why}); outputs equal: "
        f"{torch.allclose(small_tp(x), small_fp(x), atol=1e-5)}"
    )


def resnet56_global() -> None:
    print("\n## ResNet-56 (CIFAR 3x32x32), global L1 magnitude, one step, >= 2.11x fewer MACs\n")
    x = torch.randn(1, 3, 32, 32)
    model = _seeded(ResNet56)
    m0, p0 = count(model, x)
    gs = channel_groups(model, x)

    def speedup(r):
        return m0 / count(fp_prune(model, x, 1, r, "global", gs)[0], x)[0]

    lo, hi = 0.0, 0.9
    # the smallest ratio (to 1e-3) whose flowprune-pruned model counts >= 2.11x fewer MACs
    for _ in range(12):
        mid = round((lo + hi) / 2, 4)
        lo, hi = (lo, mid) if speedup(mid) >= 2.11 else (mid, hi)
    ratio = hi
    small_fp, _, removed = fp_prune(model, x, 1, ratio, "global", gs)
    small_tp = tp_prune(model, x, 1, ratio, True)
    mt, pt = count(small_tp, x)
    mf, pf = count(small_fp, x)
    ok, why = same_weights(small_tp, small_fp)
    rows = [
        ["before (both)", fmt_m(m0), fmt_m(p0), ""],
        ["Torch-Pruning 1.6.1", fmt_m(mt), fmt_m(pt), f"{m0 / mt:.2f}x"],
        ["flowprune", fmt_m(mf), fmt_m(pf), f"{m0 / mf:.2f}x"],
    ]
    print(
        f"global ratio {ratio} (the smallest reaching 2.11x, bisected on flowprune); "
        f"Torch-Pruning's published result (progressive, fine-tuned): 127.12 M -> 60.07 M MACs\n"
    )
    print(table(["model", "MACs", "params", "speed-up"], rows))
    print(f"\nSame kept channels: **{'yes' if ok else 'NO'}** ({why})")


def zoo_parity() -> None:
    print("\n## Parity on the zoo CNNs: 50 % of every layer's channels by L2 magnitude\n")
    rows = []
    for name in ("resnet_basic", "resnet_bottleneck", "vgg_bn", "densenet", "mobilenetv2"):
        e = ZOO[name]
        model, x = e.build(), e.inputs()
        gs = channel_groups(model, x)
        mods = dict(model.named_modules())
        out = {
            m.param.rsplit(".", 1)[0]
            for g in gs
            if not g.prunable
            for m in g.members
            if m.role == "producer"
        }

        def run():
            small = copy.deepcopy(model)
            pruner = tp.pruner.BasePruner(
                small,
                x,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=0.5,
                ignored_layers=[dict(small.named_modules())[p] for p in out if p in mods],
            )
            pruner.step()
            return small

        small_tp, err, _ = limited(run, 60)
        small_fp = fp_prune(model, x, 2, 0.5, "layer", gs)[0]
        m0, p0 = count(model, x)
        mf, pf = count(small_fp, x)
        if err is not None:
            rows.append(
                [name, f"{m0 / 1e6:.3f} M", f"{mf / 1e6:.3f} M", err, f"{pf / 1e3:.1f} k", "", ""]
            )
            continue
        mt, pt = count(small_tp, x)
        ok, why = same_weights(small_tp, small_fp)
        rows.append(
            [
                name,
                f"{m0 / 1e6:.3f} M",
                f"{mf / 1e6:.3f} M",
                f"{mt / 1e6:.3f} M",
                f"{pf / 1e3:.1f} k",
                f"{pt / 1e3:.1f} k",
                f"{'yes' if ok else 'NO'} ({why})",
            ]
        )
    print(
        table(
            [
                "model",
                "MACs before",
                "flowprune MACs",
                "TP MACs",
                "flowprune params",
                "TP params",
                "same kept channels",
            ],
            rows,
        )
    )
    print(
        "\n(layers producing the model's output are ignored by both: flowprune's groups say so, TP is told)"
    )


# --------------------------------------------------------------------------- coverage
class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _call(model, inputs):
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def limited(fn, limit: int):
    """(result, None, seconds) of ``fn()`` within ``limit`` seconds, or (None, "timeout"/"error: ...", s)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
        return out, None, time.perf_counter() - t0
    except _Timeout:
        return None, f"timeout (> {limit} s)", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported
        msg = str(e).splitlines()[0][:70] if str(e) else ""
        return None, f"error: {type(e).__name__}: {msg}".replace("|", "/"), time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tp_groups(model, inputs, limit: int) -> tuple[str, float]:
    def run():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        return len(list(dg.get_all_groups()))

    n, err, t = limited(run, limit)
    return (str(n) if err is None else err), t


def coverage(tp_limit: int) -> None:
    print("\n## Coverage and speed: every flowprune.zoo model (1 CPU thread)\n")
    rows = []
    for name, entry in ZOO.items():
        model, inputs = entry.build(), entry.inputs()
        t0 = time.perf_counter()
        _call(model, inputs)
        t_fwd = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            g0 = channel_groups(model, inputs, check=False)
            t_nc = time.perf_counter() - t0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                gs = channel_groups(model, inputs, check=True)
                t_c = time.perf_counter() - t0
            fp = [len(g0), len(gs.prunable()), len(gs.failed), f"{t_nc:.2f}", f"{t_c:.2f}"]
        except Exception as e:  # noqa: BLE001 - reported
            fp = [f"error: {type(e).__name__}", "", "", "", ""]
        tpn, t_tp = tp_groups(entry.build(), entry.inputs(), tp_limit)
        rows.append([name, *fp, f"{t_fwd:.3f}", tpn, f"{t_tp:.2f}"])
        print(f"  ... {name}", file=sys.stderr, flush=True)
    print(
        table(
            [
                "model",
                "flowprune groups",
                "prunable",
                "failed check",
                "groups s (no check)",
                "groups s (check)",
                "forward s",
                "TP groups",
                "TP s",
            ],
            rows,
        )
    )


# --------------------------------------------------------------------------- GQA
def _tiny_llm(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from flowprune.zoo.hf import _jitter_constant_params

    kw = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    cfg, cls = (
        (LlamaConfig(**kw), LlamaForCausalLM)
        if kind == "llama"
        else (Qwen3Config(**kw), Qwen3ForCausalLM)
    )
    torch.manual_seed(0)
    m = cls(cfg)
    _jitter_constant_params(m)
    return m.eval()


def _llm_inputs():
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def gqa_flowprune(kind: str) -> list:
    model, x = _tiny_llm(kind), _llm_inputs()
    gs = channel_groups(model, x)
    heads = [g for g in gs.prunable() if g.kind == "heads"]
    scores = magnitude_scores(model, heads, p=2)
    removed = select_units(heads, scores, 0.5, "layer")
    with UnitGates(model, heads) as gates:
        gates.set(removed, 0.0)
        masked = _logits(model, x)
    slices, attrs = slices_for(model, heads, removed)
    small = slice_(copy.deepcopy(model), slices, attrs)
    err = (_logits(small, x) - masked).abs().max().item()
    k = small.model.layers[0].self_attn
    shapes = f"q {tuple(k.q_proj.weight.shape)}, k {tuple(k.k_proj.weight.shape)}, o {tuple(k.o_proj.weight.shape)}"
    reload = "not built yet"
    try:  # plan -> apply (syncs the config's head counts) -> save -> plain from_pretrained
        graph = flowprune.trace(model, x)
        plan = graph.plan(units=removed)
        pruned = flowprune.apply(model, plan)
        with tempfile.TemporaryDirectory() as d:
            path = flowprune.save_pretrained(pruned, os.path.join(d, "pruned"))
            back = type(model).from_pretrained(path).eval()
            e2 = (_logits(back, x) - _logits(pruned, x)).abs().max().item()
            reload = (
                f"yes, config {back.config.num_attention_heads}q/{back.config.num_key_value_heads}kv, "
                f"max diff {e2:.1e}"
            )
    except Exception as e:  # noqa: BLE001 - reported
        reload = f"no: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
    return [
        f"{kind} flowprune",
        f"{len(heads)} head groups of 2 units; removed "
        f"{sum(len(v) for v in removed.values())} kv-groups",
        shapes,
        f"sliced vs masked max diff {err:.1e} ({'ok' if err <= 1e-5 else 'FAIL'})",
        reload,
    ]


def gqa_tp(kind: str, limit: int) -> list:
    """Torch-Pruning's LLM recipe (examples/LLMs/prune_llm.py): heads pruned, head dims kept."""
    model, x = _tiny_llm(kind), _llm_inputs()
    ref = _logits(model, x)
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads

    def run():
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=x["input_ids"],
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=False,
            output_transform=lambda out: out.logits,
            pruning_ratio=0.5,
            ignored_layers=[model.lm_head],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=0.5,
            round_to=4,
        )
        pruner.step()

    _, err, t = limited(run, limit)
    if err is not None:
        return [
            f"{kind} Torch-Pruning",
            f"{err} in BasePruner(...) / step() after {t:.0f} s",
            "",
            "",
            "",
        ]
    a = model.model.layers[0].self_attn
    shapes = (
        f"q {tuple(a.q_proj.weight.shape)}, k {tuple(a.k_proj.weight.shape)}, "
        f"o {tuple(a.o_proj.weight.shape)}, hidden {model.model.embed_tokens.weight.shape[1]}"
    )
    hd = a.head_dim
    for name, m in model.named_modules():  # the recipe's config update
        if name.endswith("self_attn"):
            model.config.num_attention_heads = m.q_proj.out_features // hd
            model.config.num_key_value_heads = m.k_proj.out_features // hd
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = m.q_proj.out_features // m.k_proj.out_features
    model.config.hidden_size = model.model.embed_tokens.weight.shape[1]
    try:
        out = _logits(model, x)
        status = f"forward ok, logits {tuple(out.shape)}, max diff vs unpruned {(out - ref).abs().max().item():.2f}"
    except Exception as e:  # noqa: BLE001 - reported
        status = f"forward fails: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return [f"{kind} Torch-Pruning", "recipe ran", shapes, status, "n/a"]


def gqa(tp_limit: int) -> None:
    print("\n## GQA: tiny Llama / Qwen3 (hidden 64, 8 query / 2 key-value heads, 2 layers)\n")
    rows = []
    for kind in ("llama", "qwen3"):
        rows.append(gqa_flowprune(kind))
        rows.append(gqa_tp(kind, tp_limit))
    print(
        table(
            [
                "model / tool",
                "what was pruned",
                "layer 0 shapes after",
                "output",
                "reload with from_pretrained",
            ],
            [[str(c).replace("|", "/") for c in r] for r in rows],
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="skip the ResNet-18 parity (the slowest part)"
    )
    ap.add_argument(
        "--tp-timeout",
        type=int,
        default=30,
        help="seconds allowed to each Torch-Pruning graph build (it never ends on GQA decoders)",
    )
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # the 1.6.1 wheel's tp.__version__ says 1.6.0: report the installed distribution's version
    print(f"# flowprune vs Torch-Pruning {importlib.metadata.version('torch-pruning')}\n")
    print(
        f"`{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}` "
        f"(torch {torch.__version__}, flowprune {flowprune.__version__}, {torch.get_num_threads()} thread)"
    )
    t0 = time.perf_counter()
    if not args.quick:
        parity_resnet18()
    resnet56_global()
    zoo_parity()
    gqa(args.tp_timeout)
    coverage(args.tp_timeout)
    print(f"\n_total {time.perf_counter() - t0:.0f} s_")


if __name__ == "__main__":
    main()
