"""Compensation without fine-tuning: after input channels Q of a consumer layer are removed, refit the
kept columns K on calibration inputs.

For a consumer ``W`` [out, in] with calibration inputs ``X`` [N, in] (a convolution's unfolded patches:
a channel is a block of k·k columns; a bias is a column of ones), ``H = XᵀX`` (+ 1 % of mean(diag H) on
the diagonal):

* ``obs``: the optimal-brain-surgeon update of the kept columns, ``δW = −W[:,Q] ((H⁻¹)[Q,Q])⁻¹ (H⁻¹)[Q,:]``,
  computed as the equal least-squares refit ``W_K' = W_K + W_Q H_QK H_KK⁻¹`` (the consumer's output on
  the calibration inputs is reproduced as well as the kept columns can);
* ``mean``: FLAP's bias compensation, ``b' = b + W[:,Q] · mean(x_Q)`` (needs a bias).

``obs_cost`` gives the OBS cost ``½ tr(W_Q ((H⁻¹)_QQ)⁻¹ W_Qᵀ)`` of removing a set of columns (a score).

>>> stats = consumer_stats(model, consumers, batches)     # one pass of the original model
>>> new = compensated(model, stats, removed_columns, "obs")  # {param name: new weight (kept columns)}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._runtime import call_model, eval_mode
from ..adapters import scoring_kwargs
from ..data import split_batch
from ..errors import InputError

COMPENSATIONS = ("none", "obs", "mean")
DAMPING = 0.01  # × mean(diag H)


@dataclass
class Stats:
    """Streaming input statistics of one consumer: H = Σ XᵀX and the column sums (float64)."""

    H: Tensor
    total: Tensor
    n: int
    block: int  # columns per input channel (k·k for a convolution, 1 for a linear layer)
    bias: bool


def _module_of(model: nn.Module, param: str) -> tuple[nn.Module, str]:
    path, _, attr = param.rpartition(".")
    return model.get_submodule(path) if path else model, attr


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1:
        return "conv"
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # Hugging Face GPT-2: W [in, out]
        return "conv1d_hf"
    return None


def _columns(m: nn.Module, kind: str, x: Tensor) -> Tensor:
    """The consumer's inputs as rows of columns: [N, in·block]."""
    if kind == "conv":
        if x.dim() != 4:
            raise InputError(
                f"compensation handles 2-D convolutions only, got input {tuple(x.shape)}"
            )
        if isinstance(m.padding, str):
            raise InputError("compensation needs numeric padding on convolutions")
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [B, C·k·k, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def consumer_stats(
    model: nn.Module, consumers: Iterable[str], batches: Iterable[Any]
) -> dict[str, Stats]:
    """Input statistics of the consumer weights ``consumers`` (state_dict names) over ``batches``
    (calibration batches: labels are dropped), on the model as it is (one forward per batch)."""
    stats: dict[str, Stats] = {}
    hooks = []
    for name in dict.fromkeys(consumers):
        m, _ = _module_of(model, name)
        kind = _kind(m)
        if kind is None:
            continue

        def pre(mod, args, name=name, kind=kind):
            x = args[0].detach().to(torch.float64)
            X = _columns(mod, kind, x)
            bias = getattr(mod, "bias", None) is not None
            if bias:
                X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], 1)
            s = stats.get(name)
            if s is None:
                block = int(torch.tensor(mod.kernel_size).prod()) if kind == "conv" else 1
                s = stats[name] = Stats(
                    torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device),
                    torch.zeros(X.shape[1], dtype=torch.float64, device=X.device),
                    0,
                    block,
                    bias,
                )
            s.H += X.T @ X
            s.total += X.sum(0)
            s.n += len(X)

        hooks.append(m.register_forward_pre_hook(pre))
    try:
        with eval_mode(model), torch.no_grad():
            for b in batches:
                x, _ = split_batch(b)  # labels are not model inputs
                if isinstance(x, dict):
                    x = {**x, **scoring_kwargs(model)}
                call_model(model, x)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _weight_2d(m: nn.Module, kind: str) -> Tensor:
    """[out, columns] (+ the bias as a last column)."""
    W = m.weight.detach().to(torch.float64)
    W = W.T if kind == "conv1d_hf" else W.reshape(W.shape[0], -1)
    b = getattr(m, "bias", None)
    return torch.cat([W, b.detach().to(torch.float64)[:, None]], 1) if b is not None else W


def _cols(channels: Iterable[int], block: int) -> list[int]:
    return [c * block + j for c in channels for j in range(block)]


def compensated(
    model: nn.Module,
    stats: Mapping[str, Stats],
    removed: Mapping[str, Iterable[int]],
    method: str = "obs",
) -> dict[str, Tensor]:
    """New values of each consumer's weight (and bias) after removing its input channels
    ``removed[consumer weight name]``, with the removed columns already dropped:
    ``{param name: tensor}`` in the parameters' own dtype and layout."""
    if method not in COMPENSATIONS:
        raise InputError(f"unknown compensation {method!r}; choose one of {COMPENSATIONS}")
    out: dict[str, Tensor] = {}
    if method == "none":
        return out
    for name, chans in removed.items():
        s = stats.get(name)
        if s is None:
            continue
        m, _ = _module_of(model, name)
        kind = _kind(m)
        Wb = _weight_2d(m, kind)  # [out, C·block (+1)]
        ncols = Wb.shape[1]
        Q = _cols(sorted(set(chans)), s.block)
        K = [i for i in range(ncols) if i not in set(Q)]
        if method == "mean":
            if not s.bias:
                raise InputError(
                    f"compensation 'mean' adds to the bias, and {name.rsplit('.', 1)[0]} has none: "
                    f"use 'obs'"
                )
            mean = s.total / max(s.n, 1)
            new = Wb[:, K].clone()
            new[:, -1] += Wb[:, Q] @ mean[Q]
        else:
            H = s.H / max(s.n, 1)
            H = H + DAMPING * H.diagonal().mean() * torch.eye(ncols, dtype=H.dtype, device=H.device)
            # W_K' = W_K + W_Q H_QK H_KK^-1 (H symmetric: (H_KK^-1 H_KQ)^T = H_QK H_KK^-1)
            A = torch.linalg.solve(H[K][:, K], H[K][:, Q])  # [K, Q]
            new = Wb[:, K] + Wb[:, Q] @ A.T
        out.update(_split(m, kind, name, new, s.bias))
    return out


def _split(m: nn.Module, kind: str, name: str, new: Tensor, bias: bool) -> dict[str, Tensor]:
    """The refitted [out, kept columns (+1)] back into the module's weight (and bias) layout."""
    prefix = name.rsplit(".", 1)[0]
    res = {}
    if bias:
        res[f"{prefix}.bias"] = new[:, -1].to(m.bias.dtype)
        new = new[:, :-1]
    w = m.weight
    if kind == "conv1d_hf":
        res[name] = new.T.contiguous().to(w.dtype)
    elif kind == "conv":
        res[name] = new.reshape(w.shape[0], -1, *w.shape[2:]).to(w.dtype)
    else:
        res[name] = new.to(w.dtype)
    return res


def obs_cost(stats: Stats, W: Tensor, channels: Iterable[int]) -> float:
    """½ tr(W_Q ((H⁻¹)_QQ)⁻¹ W_Qᵀ): the calibration output error removing ``channels`` leaves after
    the OBS update (``W`` [out, columns (+1)] as ``_weight_2d`` gives it)."""
    H = stats.H / max(stats.n, 1)
    n = H.shape[0]
    H = H + DAMPING * H.diagonal().mean() * torch.eye(n, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.inv(H)
    Q = _cols(sorted(set(channels)), stats.block)
    WQ = W[:, Q].to(torch.float64)
    return float(0.5 * torch.trace(WQ @ torch.linalg.solve(Hinv[Q][:, Q], WQ.T)))


def downdate(W: Tensor, Hinv: Tensor, Q: list[int]) -> tuple[Tensor, Tensor]:
    """One OBS step: remove columns Q of ``W`` [out, cols] and refit the rest (W ← W − W_Q
    ((H⁻¹)_QQ)⁻¹ H⁻¹_Q:, zero in Q), and drop Q from H⁻¹ (H⁻¹ ← H⁻¹ − H⁻¹_:Q ((H⁻¹)_QQ)⁻¹ H⁻¹_Q:).
    Steps compose: removing Q1 then Q2 equals removing Q1 ∪ Q2 at once."""
    inv_QQ = torch.linalg.inv(Hinv[Q][:, Q])
    return W - W[:, Q] @ inv_QQ @ Hinv[Q, :], Hinv - Hinv[:, Q] @ inv_QQ @ Hinv[Q, :]


def obs_greedy(
    model: nn.Module,
    groups: Iterable[Any],
    stats: Mapping[str, Stats],
    counts: Mapping[str, int],
) -> dict[str, list[int]]:
    """Remove ``counts[group id]`` units of each group one at a time, each step the unit whose removal
    leaves the least OBS error in its consumers *after the previous removals' refits*: the weights and
    H⁻¹ of every consumer are downdated after each step (H⁻¹ ← H⁻¹ − H⁻¹_:Q ((H⁻¹)_QQ)⁻¹ H⁻¹_Q:),
    so the choice sees what the refit can recover (a head or a convolution channel is a block of
    columns).  ``stats``: ``consumer_stats`` of the groups' consumers.

    >>> removed = obs_greedy(model, groups, consumer_stats(model, consumers, batches), {"fc1:channels": 40})
    """
    out: dict[str, list[int]] = {}
    for g in groups:
        k = counts.get(g.id, 0)
        if not k:
            continue
        state = []  # per consumer: (W [out, cols], H⁻¹, columns of each unit)
        for m in g.members:
            s = stats.get(m.param)
            if m.role != "consumer" or s is None:
                continue
            mod, _ = _module_of(model, m.param)
            W = _weight_2d(mod, _kind(mod)).clone()
            H = s.H / max(s.n, 1)
            n = H.shape[0]
            H = H + DAMPING * H.diagonal().mean() * torch.eye(n, dtype=H.dtype, device=H.device)
            state.append([W, torch.linalg.inv(H), [_cols(chans, s.block) for chans in m.index]])
        if not state:
            continue
        left = set(range(g.units))
        chosen: list[int] = []
        for _ in range(min(k, g.units - 1)):
            best, best_cost = None, float("inf")
            for u in left:
                cost = 0.0
                for W, Hinv, cols in state:
                    Q = cols[u]
                    WQ = W[:, Q]
                    cost += float(0.5 * torch.trace(WQ @ torch.linalg.solve(Hinv[Q][:, Q], WQ.T)))
                if cost < best_cost:
                    best, best_cost = u, cost
            for st in state:
                st[0], st[1] = downdate(st[0], st[1], st[2][best])
            left.discard(best)
            chosen.append(best)
        out[g.id] = sorted(chosen)
    return out
