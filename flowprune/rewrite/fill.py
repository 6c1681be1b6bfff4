"""Compensation without fine-tuning: fit what a removed branch is replaced by, on calibration data.

``mean``: the branch's mean output per channel over calibration samples and tokens / positions, a
constant added where the branch was.  ``linear``: the least-squares map x -> z from the branch module's
input to its output over the channel dim, with bias: a Linear over D for [B, T, D] (every token a
sample), a 1×1 convolution for [B, C, H, W] (every position a sample).  Closed form from streamed XᵀX and
XᵀZ (float64, ridge 1e-6 of the mean diagonal).  Both are fitted on the unpruned model; a statistic that
turns NaN/inf raises InputError naming the module and the batch, so no NaN is baked into a fill.

>>> fitted = fit_fills(model, graph.plan(["layer1.0.bn2:branch"], fill="linear"), batches)
>>> fitted["layer1.0.bn2"]["weight"].shape   # [C_out, C_in]
torch.Size([8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._runtime import call_model, eval_mode
from .._tree import first_tensor, tensor_leaves
from ..data import split_batch
from ..errors import InputError
from ..plan import Plan, Replacement


def linear_dim(rep: Replacement) -> int:
    """The channel dim of a linear fill (plans written before it was recorded: the last dim)."""
    return int(rep.shape[2]) if len(rep.shape) > 2 else -1


def _channels_last(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    # [..., C at dim, ...] -> [positions, C]
    return t.movedim(dim, -1).reshape(-1, n)


def _accumulate(
    rep: Replacement, s: dict[str, Any], x: torch.Tensor | None, z: torch.Tensor
) -> None:
    """Add one call's statistics to ``s``: the output sum (mean) or XᵀX, XᵀZ (linear), in float64."""
    z = z.detach().double()
    if rep.mode == "mean":
        # rep.shape: the fill's shape, e.g. [1, C, 1, 1]; sum over the dims where it is 1
        dims = [d for d, k in enumerate(rep.shape) if k == 1 and z.shape[d] != 1] or [0]
        s["sum"] = s.get("sum", 0) + z.sum(dims, keepdim=True)
        s["n"] += z.numel() // max(1, torch.tensor(rep.shape).prod().item())
        return
    if x is None:
        raise InputError(
            f"fill='linear' for '{rep.path}' needs a tensor input, and the module got none"
        )
    dim = linear_dim(rep)
    x = _channels_last(x.detach().double(), dim, rep.shape[0])  # [N, C_in]
    x = torch.cat([x, x.new_ones(len(x), 1)], 1)  # [N, C_in + 1]: bias column
    z = _channels_last(z, dim, rep.shape[1])  # [N, C_out]
    s["xx"] = s.get("xx", 0) + x.T @ x  # [C_in + 1, C_in + 1]
    s["xz"] = s.get("xz", 0) + x.T @ z  # [C_in + 1, C_out]
    s["n"] += len(x)


def _check_finite(sums: dict[str, dict[str, Any]], batch: int) -> None:
    for path, s in sums.items():
        for key in ("sum", "xx", "xz"):
            v = s.get(key)
            if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all()):
                what = (
                    "mean output"
                    if key == "sum"
                    else f"{'XᵀX' if key == 'xx' else 'XᵀZ'} statistic"
                )
                raise InputError(
                    f"the {what} of the fill for '{path}' is not finite (NaN/inf) after calibration "
                    f"batch {batch}: that batch drives '{path}' (or its input) to NaN/inf. Check the "
                    f"data and the model's dtype (e.g. float16 overflow), or use fill='zeros'"
                )


def fit_fills(
    model: nn.Module, plan: Plan, batches: Sequence[Any]
) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {"fill": tensor} or {"weight": [out, in], "bias": [out]}} for the plan's fills.

    Raises InputError when a statistic turns NaN/inf (naming the module and the calibration batch) or
    when a module to fill is never called on the data.
    """
    modules = dict(model.named_modules())
    sums: dict[str, dict[str, Any]] = {r.path: {"n": 0} for r in plan.fills}
    reps = {r.path: r for r in plan.fills}

    def hook(path: str):
        rep = reps[path]

        def fn(module, args, kwargs, output):
            x = first_tensor(args, kwargs) if rep.mode == "linear" else None
            _accumulate(rep, sums[path], x, tensor_leaves(output)[rep.out_index])

        return fn

    hooks = [modules[p].register_forward_hook(hook(p), with_kwargs=True) for p in reps]
    try:
        with torch.no_grad(), eval_mode(model):
            for i, b in enumerate(batches):
                call_model(model, split_batch(b)[0])
                _check_finite(sums, i)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for path, rep in reps.items():
        s = sums[path]
        if s["n"] == 0:
            raise InputError(
                f"'{path}' was never called on the calibration data, so its fill='{rep.mode}' "
                f"cannot be fitted: pass the batches given to analyze"
            )
        if rep.mode == "mean":
            out[path] = {"fill": (s["sum"] / s["n"]).reshape(rep.shape).float().cpu()}
        else:
            xx, xz = s["xx"].cpu(), s["xz"].cpu()
            ridge = 1e-6 * xx.diagonal().mean().clamp_min(1e-12)
            w = torch.linalg.solve(
                xx + ridge * torch.eye(len(xx), dtype=xx.dtype), xz
            )  # [in+1, out]
            if not bool(torch.isfinite(w).all()):
                raise InputError(
                    f"the least-squares fill for '{path}' is not finite: its input statistics are "
                    f"degenerate; use fill='mean' or fill='zeros'"
                )
            out[path] = {
                "weight": w[:-1].T.float().contiguous(),
                "bias": w[-1].float().contiguous(),
            }
    return out
