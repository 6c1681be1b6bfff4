"""Compensation without fine-tuning: fit what a removed branch is replaced by, on calibration data.

``mean``: the branch's mean output over calibration samples (and tokens / positions), a constant added
where the branch was.  ``linear``: the least-squares map x -> z from the branch module's input to its
output over calibration tokens, with bias, in closed form from streamed XᵀX and XᵀZ (float64, ridge 1e-6
of the mean diagonal).  Both are fitted on the unpruned model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .._tree import first_tensor, tensor_leaves
from ..data import split_batch
from ..graph.trace import call_model, eval_mode
from ..plan import Plan


def fit_fills(model: nn.Module, plan: Plan, batches: Sequence[Any]) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {"fill": tensor} or {"weight": [out, in], "bias": [out]}} for the plan's fills."""
    modules = dict(model.named_modules())
    sums: dict[str, dict[str, Any]] = {r.path: {"n": 0} for r in plan.fills}
    reps = {r.path: r for r in plan.fills}

    def hook(path: str):
        rep = reps[path]

        def fn(module, args, kwargs, output):
            z = tensor_leaves(output)[rep.out_index].detach().double()
            s = sums[path]
            if rep.mode == "mean":
                dims = [d for d, k in enumerate(rep.shape) if k == 1 and z.shape[d] != 1] or [0]
                s["sum"] = s.get("sum", 0) + z.sum(dims, keepdim=True)
                s["n"] += z.numel() // max(1, torch.tensor(rep.shape).prod().item())
            else:
                x = first_tensor(args, kwargs).detach().double().reshape(-1, rep.shape[0])
                x = torch.cat([x, x.new_ones(len(x), 1)], 1)  # bias column
                z = z.reshape(-1, rep.shape[1])
                s["xx"] = s.get("xx", 0) + x.T @ x
                s["xz"] = s.get("xz", 0) + x.T @ z
                s["n"] += len(x)

        return fn

    hooks = [modules[p].register_forward_hook(hook(p), with_kwargs=True) for p in reps]
    try:
        with torch.no_grad(), eval_mode(model):
            for b in batches:
                call_model(model, split_batch(b)[0])
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for path, rep in reps.items():
        s = sums[path]
        if rep.mode == "mean":
            out[path] = {"fill": (s["sum"] / max(s["n"], 1)).reshape(rep.shape).float().cpu()}
        else:
            xx, xz = s["xx"].cpu(), s["xz"].cpu()
            ridge = 1e-6 * xx.diagonal().mean().clamp_min(1e-12)
            w = torch.linalg.solve(xx + ridge * torch.eye(len(xx), dtype=xx.dtype), xz)  # [in+1, out]
            out[path] = {"weight": w[:-1].T.float().contiguous(), "bias": w[-1].float().contiguous()}
    return out
