"""Taylor expansion of the calibration loss in gate space, around the current α (normally all ones).

g = ∂L/∂α (one backward for all C candidates); H = ∂²L/∂α∂α (C×C) from Hessian-vector products:
reverse-over-reverse (``autograd.grad`` with ``create_graph``, then one batched backward of the C gate
gradients), or forward-over-reverse with ``torch.func.jvp`` over ``torch.func.grad``.  Removing a set S
(α_c: 1 → 0 for c ∈ S) predicts ΔL(S) ≈ −Σ_S g_c + ½ Σ_{c,c'∈S} H_cc'.  Cheaper variants: a Hutchinson
estimate of diag(H) from a few random probes, and the Fisher matrix from per-sample gradients (for the
distill loss, whose per-sample gradients vanish at α = 1, the true Fisher of the original predictions:
exact over the classes of a small classifier batch, else one Gaussian projection per sample/token).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from .engine import Engine
from .losses import logits_of


def _math_sdpa():
    # second derivatives through the fused CPU attention kernels fail on torch 2.x: use the math backend
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover
        return nullcontext()


def _hvp_rows(
    g: torch.Tensor, alpha: torch.Tensor, vectors: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """Rows vᵀH for each row v of ``vectors`` [K, C], from the gradient ``g`` built with create_graph:
    batched backwards of ``chunk`` vectors at a time (memory grows with the chunk)."""
    rows = []
    for i in range(0, len(vectors), chunk):
        v = vectors[i : i + chunk]
        try:
            rows.append(
                torch.autograd.grad(
                    g, alpha, grad_outputs=v, is_grads_batched=True, retain_graph=True
                )[0]
            )
        except RuntimeError:  # an op without a batching rule: one backward per vector
            rows.append(
                torch.stack(
                    [torch.autograd.grad(g, alpha, grad_outputs=u, retain_graph=True)[0] for u in v]
                )
            )
    return torch.cat(rows)


def gradient_and_hessian(
    eng: Engine,
    hessian: str = "full",
    method: str = "autograd",
    probes: int = 16,
    at: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g [C], H [C, C] or None).  ``hessian``: "full", "diag" (Hutchinson; H returned diagonal) or "none".
    ``method``: "autograd" (reverse-over-reverse) or "func" (``torch.func.jvp`` over ``torch.func.grad``)."""
    C = len(eng.candidates)
    if C == 0:
        return torch.zeros(0, dtype=torch.float64), (
            None if hessian == "none" else torch.zeros(0, 0, dtype=torch.float64)
        )
    dev = eng.gates.device
    at = torch.ones(C, dtype=torch.float64, device=dev) if at is None else at.double().to(dev)
    eng.references()
    g_sum = torch.zeros(C, dtype=torch.float64)
    H_sum = torch.zeros(C, C, dtype=torch.float64) if hessian != "none" else None
    gen = torch.Generator().manual_seed(seed)
    hutchinson = hessian == "diag" and probes < C
    if hutchinson:  # Rademacher probes: E[v ⊙ Hv] = diag(H)
        V = (torch.randint(0, 2, (probes, C), generator=gen) * 2 - 1).double().to(dev)
    else:
        V = torch.eye(C, dtype=torch.float64, device=dev)
    for i, n in enumerate(
        tqdm(eng.sizes, desc="gate Taylor", disable=not eng.progress, leave=False)
    ):

        def loss_at(a: torch.Tensor, i: int = i) -> torch.Tensor:
            with eng.alphas(a):
                return eng.batch_loss(i, eng.run(i))

        with _math_sdpa():
            if method == "func":
                g, HV = _func_batch(loss_at, at, V if hessian != "none" else None)
            else:
                alpha = at.clone().requires_grad_(True)
                L = loss_at(alpha)
                (g,) = torch.autograd.grad(L, alpha, create_graph=hessian != "none")
                HV = _hvp_rows(g, alpha, V) if hessian != "none" else None
        g_sum += g.detach().cpu() * n
        HV = HV.cpu() if HV is not None else None
        if H_sum is not None:
            if hessian == "diag":
                d = (V.cpu() * HV.detach()).mean(0) if hutchinson else torch.diagonal(HV.detach())
                H_sum += torch.diag(d) * n
            else:
                H_sum += HV.detach() * n
    total = sum(eng.sizes)
    H = None if H_sum is None else H_sum / total
    if H is not None and hessian == "full":
        H = (H + H.T) / 2  # exact up to rounding; symmetrise
    return g_sum / total, H


def _func_batch(
    loss_at: Callable, at: torch.Tensor, V: torch.Tensor | None
) -> tuple[torch.Tensor, Any]:
    from torch.func import grad, jvp

    grad_fn = grad(loss_at)
    g = grad_fn(at)
    if V is None:
        return g, None
    return g, torch.stack([jvp(grad_fn, (at,), (v,))[1] for v in V])


def fisher(
    eng: Engine, at: torch.Tensor | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g [C], F [C, C]): F = mean over samples of ∇ℓ_n ∇ℓ_nᵀ (one batched backward per batch)."""
    if not eng.per_sample:
        raise InputError(
            "the Fisher variant needs per-sample losses: use loss='lm', 'ce' or 'distill'"
        )
    C = len(eng.candidates)
    if C == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, 0, dtype=torch.float64)
    dev = eng.gates.device
    at = torch.ones(C, dtype=torch.float64, device=dev) if at is None else at.double().to(dev)
    refs = eng.references()
    gen = torch.Generator().manual_seed(seed)
    g_sum, F_sum = torch.zeros(C, dtype=torch.float64), torch.zeros(C, C, dtype=torch.float64)
    for i, n in enumerate(eng.sizes):
        alpha = at.clone().requires_grad_(True)
        with eng.alphas(alpha), _math_sdpa():
            out = eng.run(i)
            per = eng.batch_loss(i, out, per_sample=True)  # [B]
            fisher_rows = (
                _fisher_outputs(out, refs[i], eng, i, gen)
                if eng.fn.__name__ == "distill_loss"
                else None
            )
        eye = torch.eye(len(per), dtype=per.dtype, device=per.device)
        J = torch.autograd.grad(
            per,
            alpha,
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=fisher_rows is not None,
        )[0]  # [B, C]
        g_sum += J.sum(0).detach().cpu()
        if fisher_rows is not None:
            outs, weights = (
                fisher_rows  # [R] scalars whose weighted gradient outer products sum to F·B
            )
            J = (
                torch.autograd.grad(
                    outs,
                    alpha,
                    grad_outputs=torch.eye(len(outs), dtype=outs.dtype, device=outs.device),
                    is_grads_batched=True,
                )[0]
                * weights.double().sqrt()[:, None]
            )
        F_sum += (J.T @ J).detach().cpu()
    total = sum(eng.sizes)
    return g_sum / total, F_sum / total


EXACT_ROWS = 128  # classifiers: exact over the classes while batch × classes stays below this


def _fisher_outputs(
    out: Any, ref: Any, eng: Engine, i: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalars r and weights w with Σ w ∇r ∇rᵀ ≈ B × the Fisher of the distill loss (the Hessian of the
    per-sample KL at α = 1: Jᵀ(diag p − ppᵀ)J with J = ∂logits/∂α).

    Classifiers with batch × classes ≤ ``EXACT_ROWS``: exact, every class log-probability weighted by its
    original probability.  Otherwise one Gaussian projection per position: r = Σ_t v_tᵀ logits_t with
    v_t = (diag √p_t − p_t √p_tᵀ) z_t, z_t ~ N(0, I), whose covariance is diag p − ppᵀ; summed over the
    tokens of a sequence and weighted by 1/T (cross-token terms vanish in expectation).  One backward
    row per sample, with less variance than sampling labels."""
    from ..data import split_batch
    from .losses import _token_mask

    lg, lg_ref = logits_of(out), logits_of(ref)
    if lg is None or lg_ref is None:
        raise InputError(
            "the Fisher variant of the distill loss needs logits (the model returns none)"
        )
    if lg.dim() == 2 and lg.numel() <= EXACT_ROWS:
        return F.log_softmax(lg.float(), -1).flatten(), F.softmax(lg_ref.float(), -1).flatten()
    p = F.softmax(lg_ref.double(), -1)  # [..., K]
    z = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device)
    sp = p.sqrt()
    v = (sp * z - p * (sp * z).sum(-1, keepdim=True)).to(lg.dtype)  # (diag √p − p √pᵀ) z
    r = (v * lg).sum(-1)  # [B] or [B, T]
    if r.dim() == 1:
        return r, torch.ones_like(r)
    mask = _token_mask(split_batch(eng.batches[i])[0], r.flatten(1))
    return (r.flatten(1) * mask).sum(1), 1 / mask.sum(1).clamp_min(1)
