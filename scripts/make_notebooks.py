"""Write notebooks/wikitext_layer_pruning.ipynb and notebooks/cifar_block_pruning.ipynb from the cell
sources below (so the notebooks are reviewed as code), optionally executing them.

    python scripts/make_notebooks.py            # write both, without outputs
    python scripts/make_notebooks.py --execute  # write and run them in place (nbclient), outputs kept
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

WIKITEXT = [
    (
        "md",
        """# Layer pruning of a language model on Wikitext-2, without fine-tuning

flowprune traces the model into a graph of layers and data flow, measures in one forward pass how much
of the output's information flows through every residual branch and layer, scores every removal by its
exact loss change and by a second-order Taylor expansion in gate space, and removes what matters least.

* **Model**: the tiny Llama that ships with flowprune (6 layers, 1.4 M parameters, trained on CPython's
  documentation), or any causal LM from the Hugging Face hub: set `FLOWPRUNE_MODEL=<hub id>` when online.
* **Data**: Wikitext-2 (raw) through `datasets`. Offline it falls back to CPython's documentation
  (`pydoc_data.topics`, on every machine) and says so below.
* Runs in about a minute on 2 CPU cores with the tiny model.""",
    ),
    (
        "code",
        """import os, time, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: text bars
import torch
import matplotlib.pyplot as plt
from transformers import AutoModelForCausalLM, AutoTokenizer

import flowprune
from flowprune import Budget
from flowprune.cli import default_model
from flowprune.data import python_docs, wikitext
from flowprune.score import perplexity
from flowprune.errors import InputError

torch.manual_seed(0)
MODEL = os.environ.get("FLOWPRUNE_MODEL", str(default_model()))
SEQ_LEN, N_CALIB, N_TEST = 128, 16, 16
model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
tok = AutoTokenizer.from_pretrained(MODEL)
print(f"model {os.path.basename(MODEL) if os.path.isdir(MODEL) else MODEL}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")""",
    ),
    (
        "code",
        """try:
    calib = wikitext(tok, "train", seq_len=SEQ_LEN, num_samples=N_CALIB)
    test = wikitext(tok, "test", seq_len=SEQ_LEN, num_samples=N_TEST)
    DATA = "Wikitext-2"
except InputError as e:
    print("Wikitext-2 is not reachable here (offline or no cache); falling back to CPython's documentation.")
    print("  reason:", str(e)[:160])
    calib = python_docs(tok, "train", seq_len=SEQ_LEN, num_samples=N_CALIB)
    test = python_docs(tok, "test", seq_len=SEQ_LEN, num_samples=N_TEST)
    DATA = "python docs"
print(f"calibration: {DATA}, {sum(len(b['input_ids']) for b in calib)} sequences of {SEQ_LEN} tokens")
ppl0 = perplexity(model, test)
print(f"held-out perplexity of the full model: {ppl0:.2f}")""",
    ),
    (
        "md",
        """## 1. Trace: the computation graph
Vertices are layer calls and merges (`add`, `mul`, `cat`); candidates are residual branches (the
attention and MLP sublayers: edges into an `add`) and whole decoder layers (vertices).""",
    ),
    (
        "code",
        """graph = flowprune.trace(model, {**calib[0], "use_cache": False})
print(graph)
print(graph.summary())""",
    ),
    (
        "md",
        """## 2. Score every candidate
Information flow (one forward), exact loss change of each removal (with replay of the unchanged prefix),
the gate-space Taylor expansion (gradient and the full gate Hessian from Hessian-vector products), the
Fisher approximation, and the baselines (ShortGPT, LLM-Drop, magnitude, random).""",
    ),
    (
        "code",
        """t = time.perf_counter()
report = flowprune.analyze(model, calib, loss="distill", criteria=("flow", "loss", "taylor2", "taylor2_diag", "fisher"),
                           progress=False)
print(f"analysed {len(report.candidates)} candidates in {time.perf_counter() - t:.1f} s:",
      {k: round(v, 2) for k, v in report.data["timings"].items()})
for r in sorted(report.candidates, key=lambda r: r["rank"])[:8]:
    print(f"{r['rank']:>3} {r['id']:<36} exact dL {r['loss']:.4f}  taylor2 {r['taylor2']:.4f}  flow {r['flow']:.3f}")""",
    ),
    ("md", "## 3. How well does each criterion predict the exact loss change?"),
    (
        "code",
        """fid = report.fidelity
names = sorted(fid, key=lambda c: -fid[c]["spearman"])
fig, ax = plt.subplots(figsize=(8, 3))
ax.bar(names, [fid[c]["spearman"] for c in names], color="#4c72b0")
ax.set_ylabel("Spearman vs exact ΔL"); ax.set_ylim(-1, 1); ax.axhline(0, color="k", lw=0.5)
ax.tick_params(axis="x", rotation=45); ax.set_title(f"rank agreement with exact ablation ({DATA})")
plt.tight_layout(); plt.show()""",
    ),
    (
        "md",
        """## 4. Plans at several budgets, and the perplexity curve
Each plan is applied for real (`flowprune.apply` returns a smaller copy; the original is untouched) and
the held-out perplexity of the rewritten model is measured.""",
    ),
    (
        "code",
        """strategies = [("one_shot", "loss"), ("one_shot", "taylor2"), ("one_shot", "flow"), ("one_shot", "shortgpt"),
              ("quadratic", "taylor2"), ("greedy", "loss")]
counts = [1, 2, 3, 4]
curves = {}
for strategy, criterion in strategies:
    ppl = [ppl0]
    for k in counts:
        plan = report.plan(Budget(count=k), criterion=criterion, strategy=strategy)
        ppl.append(perplexity(flowprune.apply(model, plan), test))
    curves[f"{strategy} / {criterion}"] = ppl
    print(f"{strategy:>9} / {criterion:<8}", " ".join(f"{p:8.2f}" for p in ppl))
fig, ax = plt.subplots(figsize=(7, 4))
for name, ppl in curves.items():
    ax.plot([0] + counts, ppl, marker="o", label=name)
ax.set_xlabel("removed candidates (sublayers or layers)"); ax.set_ylabel(f"held-out perplexity ({DATA})")
ax.set_yscale("log"); ax.grid(alpha=0.3); ax.legend(fontsize=8); ax.set_title("perplexity against removals, no fine-tuning")
plt.tight_layout(); plt.show()""",
    ),
    (
        "md",
        """## 5. Neurons and heads instead of layers
Inside the layers: `graph.channel_groups()` gives each layer's MLP neurons and its attention heads (with
grouped-query attention, a key/value head with the query heads that share it). 20 % of the parameters
go, chosen by one ranking of all units per saved parameter, scored by magnitude, by the flow (energy)
share or by the OBS cost of their consumers; the consumers' kept columns are left (`zeros`) or refitted
on the calibration text (`obs`). (The exact ΔL of every unit, `"loss"`, is one forward per unit: 2,316
here.)""",
    ),
    (
        "code",
        """from flowprune.score.units import select_budget, unit_scores

groups = graph.channel_groups().prunable()
print(f"{len(groups)} prunable groups:", ", ".join(f"{g.id} ({g.units} {g.kind})" for g in groups[:4]), "...")
unit = unit_scores(graph, calib, ["magnitude", "flow", "obs"])
print(f"{'score':<10} {'fill':<6} {'params':>8}  perplexity (dense {ppl0:.2f})")
for crit in ["magnitude", "flow", "obs"]:
    removed = select_budget(groups, unit[crit], params=0.2 * graph.total_params, normalise=crit == "magnitude")
    for fill in ["zeros", "obs"]:
        plan = graph.plan(units=removed, fill=fill)
        small = flowprune.apply(model, plan, data=calib if fill != "zeros" else None)
        print(f"{crit:<10} {fill:<6} {-plan.params_removed / plan.params_before:>+8.1%}  {perplexity(small, test):.2f}")""",
    ),
    (
        "md",
        """## 6. The report
`report.loss_curves` measures the calibration loss after 1…k removals per strategy; `to_html` writes one
self-contained page (flow graph, scores along depth, agreement heatmap, loss curves, plans).""",
    ),
    (
        "code",
        """report.loss_curves(6, strategies=("one_shot", "quadratic"))
report.to_html("wikitext_report.html")
report.to_markdown("wikitext_report.md")
report.to_json("wikitext_report.json")
print("wrote wikitext_report.html, .md and .json")
from flowprune.report.figures import flow_graph
fig = flow_graph(report.data["graph"], report.scores("loss"), "loss")
fig.savefig("wikitext_flow_graph.png", dpi=80, bbox_inches="tight")
from IPython.display import Image
Image("wikitext_flow_graph.png")""",
    ),
]

CIFAR = [
    (
        "md",
        """# Residual-block pruning of a CIFAR ResNet, without fine-tuning

A ResNet for 32×32 images is trained briefly, analysed with flowprune, and its residual blocks are
removed zero-shot in the order each criterion suggests; test accuracy is plotted against the compute
removed.

* **Data**: CIFAR-10 from a local directory of the standard python-pickle batches when one is given
  (`FLOWPRUNE_CIFAR10=/path/to/cifar-10-batches-py`); else through `datasets` (the hub, or its cache
  offline); else scikit-learn's handwritten digits upscaled to 32×32 RGB. The cell below says which one
  it used.
* Runs in a minute or two on 2 CPU cores with the digits fallback.""",
    ),
    (
        "code",
        """import os, time, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: text bars
import torch
import torch.nn.functional as F
from torch import nn
import matplotlib.pyplot as plt

import flowprune
from flowprune.data.images import image_classification
from flowprune.zoo.nets import BasicBlock

torch.manual_seed(0)
torch.set_num_threads(min(2, torch.get_num_threads()))
(xtr, ytr), (xte, yte), SOURCE = image_classification(num_train=10000, num_test=2000)
print(f"data: {SOURCE}")
print(f"train {tuple(xtr.shape)}, test {tuple(xte.shape)}, {int(ytr.max()) + 1} classes")""",
    ),
    (
        "code",
        """class ResNet(nn.Module):
    \"\"\"A ResNet for 32×32 images: stem, three stages of two basic blocks (16, 32, 64 channels), head.\"\"\"

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        chans = [width, 2 * width, 4 * width]
        blocks, c_in = [], width
        for i, c in enumerate(chans):
            for j in range(2):
                blocks.append(BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def accuracy(m, x, y, bs=500):
    m.eval()
    with torch.no_grad():
        return sum((m(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item() for i in range(0, len(y), bs)) / len(y)


model = ResNet()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
EPOCHS = 4
steps = EPOCHS * (len(ytr) // 64)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
t = time.perf_counter()
for epoch in range(EPOCHS):
    model.train()
    perm = torch.randperm(len(ytr))
    for i in range(0, len(ytr) - 63, 64):
        idx = perm[i:i + 64]
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy(model, xte, yte):.3f}")
model.eval()
ACC0 = accuracy(model, xte, yte)
print(f"trained in {time.perf_counter() - t:.0f} s; test accuracy {ACC0:.3f}, {sum(p.numel() for p in model.parameters()):,} parameters")""",
    ),
    (
        "md",
        """## Analyse
Calibration: 4 batches of 64 training images with their labels (`loss="ce"`). Candidates: each block's
residual branch (an edge into the `add`) and each block whose output has its input's shape (a vertex).""",
    ),
    (
        "code",
        """calib = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, 256, 64)]
t = time.perf_counter()
report = flowprune.analyze(model, calib, loss="ce", criteria=("flow", "loss", "taylor2", "fisher"), progress=False)
print(f"{len(report.candidates)} candidates analysed in {time.perf_counter() - t:.1f} s")
for r in sorted(report.candidates, key=lambda r: r["rank"]):
    print(f"{r['rank']:>3} {r['id']:<22} params {r['params']:>7,}  exact dL {r['loss']:+.4f}  taylor2 {r['taylor2']:+.4f}  "
          f"flow {r['flow']:.3f}  spvr {r['spvr']:.1f}")
print("Spearman vs exact:", {k: round(v["spearman"], 2) for k, v in report.fidelity.items()})""",
    ),
    (
        "md",
        """## Remove residual blocks zero-shot: accuracy against removed compute
For each criterion, the candidates it ranks lowest are removed one after another (`one_shot`); the
gate-Hessian `quadratic` strategy and `greedy` exact re-scoring are shown too. Every point is a rewritten
model (`flowprune.apply`) evaluated on the held-out test images.""",
    ),
    (
        "code",
        """curves = report.loss_curves(5, criteria=["loss", "taylor2", "fisher", "flow", "shortgpt", "spvr", "magnitude", "random"],
                            strategies=("one_shot", "quadratic", "greedy"))
graph = flowprune.trace(model, calib[0][0])
total = graph.total_flops
fig, ax = plt.subplots(figsize=(8, 4.5))
results = {}
for c in curves:
    accs = [ACC0] + [accuracy(flowprune.apply(model, graph.plan(ids)), xte, yte) for ids in c["removals"]]
    frac = [f / total for f in c["flops_removed"]]
    name = f"{c['strategy']} / {c['criterion']}"
    results[name] = (frac, accs)
    ax.plot(frac, accs, marker="o", ms=3, ls="-" if c["strategy"] == "one_shot" else "--", label=name)
    print(f"{name:<22}", " ".join(f"{f:.2f}:{a:.3f}" for f, a in zip(frac, accs)))
ax.set_xlabel("fraction of FLOPs removed"); ax.set_ylabel("test accuracy")
ax.set_title(f"zero-shot block removal ({SOURCE.split(' (')[0]})"); ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower left")
plt.tight_layout(); plt.show()""",
    ),
    (
        "md",
        """## Channel pruning: filters instead of blocks
The same model pruned inside its layers: `graph.channel_groups()` finds each block's inner filters and
each stage's residual stream (coupled across its blocks), every prunable group loses the same share of
its units, ranked by magnitude, flow, the gate-space second-order estimate or greedy OBS, with the
consumers' kept columns left as they are (`zeros`) or refitted on the calibration images (`obs`).""",
    ),
    (
        "code",
        """from flowprune.channels import select_units
from flowprune.score.units import select_obs_greedy, unit_scores

groups = graph.channel_groups().prunable()
print(f"{len(groups)} prunable channel groups:", ", ".join(f"{g.id} ({g.units})" for g in groups))
unit = unit_scores(graph, calib, ["magnitude", "flow", "taylor2"], loss="ce")
fig, ax = plt.subplots(figsize=(8, 4.5))
for crit in ["magnitude", "flow", "taylor2", "greedy obs"]:
    for fill in (["obs"] if crit == "greedy obs" else ["zeros", "obs"]):
        xs, ys = [0.0], [ACC0]
        for r in (0.25, 0.5, 0.75):
            if crit == "greedy obs":
                removed = select_obs_greedy(model, groups, calib, r)
            else:
                removed = select_units(groups, unit[crit], r)
            plan = graph.plan(units=removed, fill=fill)
            small = flowprune.apply(model, plan, data=calib if fill != "zeros" else None)
            xs.append(plan.flops_removed / plan.flops_before)
            ys.append(accuracy(small, xte, yte))
        ax.plot(xs, ys, marker="o", ms=3, ls="-" if fill == "obs" else ":", label=f"{crit} / {fill}")
        print(f"{crit:<11} {fill:<5}", " ".join(f"{x:.2f}:{y:.3f}" for x, y in zip(xs, ys)))
ax.set_xlabel("fraction of FLOPs removed"); ax.set_ylabel("test accuracy")
ax.set_title("zero-shot channel pruning (same share of every group's units)"); ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower left")
plt.tight_layout(); plt.show()""",
    ),
    ("md", "## The report"),
    (
        "code",
        """report.to_html("cifar_report.html")
report.to_markdown("cifar_report.md")
report.to_json("cifar_report.json")
print("wrote cifar_report.html, .md and .json")
from flowprune.report.figures import criteria_bars
fig = criteria_bars(report.candidates, ["loss", "taylor2", "flow", "shortgpt"])
fig.savefig("cifar_scores.png", dpi=80, bbox_inches="tight")
from IPython.display import Image
Image("cifar_scores.png")""",
    ),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(
        cells=[new_markdown_cell(s) if k == "md" else new_code_cell(s) for k, s in cells]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


NOTEBOOKS = {"wikitext_layer_pruning.ipynb": WIKITEXT, "cifar_block_pruning.ipynb": CIFAR}


def main() -> None:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = build(cells)
        if "--execute" in sys.argv:
            from nbclient import NotebookClient

            NotebookClient(
                nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(out)}}
            ).execute()
        nbformat.write(nb, out / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
