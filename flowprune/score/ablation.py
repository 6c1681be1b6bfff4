"""Exact ablation: ΔL_c = L(α_c = 0) − L(α = 1) for every candidate, with replay (or naive), and the
ablation-based baselines KL (to the original outputs) and SPvR's ranking function."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import split_batch
from .engine import Engine, replay_sources
from .losses import _token_mask, distill_loss, logits_of, reduce_per_sample


def _reference_probs(ref):
    """log p of the original model's outputs and its predicted class, once per batch (None: no logits)."""
    lg = logits_of(ref)
    if lg is None:
        return None
    logp = F.log_softmax(lg.float(), -1)
    pred = lg.argmax(-1, keepdim=True)
    return logp, logp.exp(), pred, logp.gather(-1, pred).exp()


def _metrics(eng: Engine, i: int, out, ref_probs) -> tuple[float, float, float]:
    """(batch loss, KL summed over samples/tokens, SPvR) of one ablated pass; the ablated log-softmax is
    computed once and, for the distill loss, the loss is the same KL (no second pass over the vocabulary)."""
    lg = logits_of(out)
    if ref_probs is None or lg is None or lg.shape != ref_probs[0].shape:
        return float(eng.batch_loss(i, out)), float("nan"), float("nan")
    logp, p, pred, p_pred = ref_probs
    logq = F.log_softmax(lg.float(), -1)
    kl = (p * (logp - logq)).sum(-1)  # per sample or token
    if eng.fn is distill_loss:
        loss = float(reduce_per_sample(kl, split_batch(eng.batches[i])[0]).mean())
    else:
        loss = float(eng.batch_loss(i, out))
    flips = (lg.argmax(-1, keepdim=True) != pred).float()
    dp = (logq.gather(-1, pred).exp() - p_pred).abs()
    spvr = (flips + dp).squeeze(-1)  # per sample or token, like kl
    w = _real_tokens(eng, i, kl)
    if w is not None:  # padded tokens count for neither (their values may be garbage, even inf)
        kl, spvr = (torch.where(w > 0, v * w, v.new_zeros(())) for v in (kl, spvr))
    return loss, float(kl.sum()), float(spvr.sum())


def _real_tokens(eng: Engine, i: int, per_token: torch.Tensor) -> torch.Tensor | None:
    """Batch i's ``attention_mask`` ([B, T], 0 = padding) when ``per_token`` is [B, T]; else None."""
    if per_token.dim() != 2:
        return None
    w = _token_mask(split_batch(eng.batches[i])[0], per_token)
    return w if w.shape == per_token.shape else None


def _own(eng: Engine, c, deepest) -> list[str]:
    """``c``'s own call (key ``"path#k"``) when its recording from the deepest candidate's pass is exact
    (it finishes before that candidate starts).  Gated at α = 0 its output no longer depends on what it
    computes (a branch gives y·0, a layer x + 0·(y − x) = x), so its recording stands in for it and the
    ablated pass skips the removed part too."""
    me, first = eng.graph.call(c.cid), eng.graph.call(deepest.cid)
    return [me.key] if me.end < first.start else []


def ablate(
    eng: Engine,
    ids: Sequence[str] | None = None,
    base: Sequence[str] = (),
    replay: bool = True,
    progress: bool | None = None,
    base_loss: float | None = None,
) -> dict[str, dict[str, float]]:
    """For each candidate in ``ids`` (default: all), with ``base`` already removed: the exact loss
    change ``loss`` relative to the loss with ``base`` removed (``base_loss``, measured here if not
    given), and ``kl``/``spvr`` against the original model's outputs.  Batch by batch, so memory holds
    one batch's replay recordings.

    Every module replayed for some candidate finishes before the deepest candidate starts, so when the
    base loss is known the deepest candidate's own (full) ablated pass records them all: no extra pass."""
    cands = [
        c for c in eng.candidates if (ids is None or c.id in set(ids)) and c.id not in set(base)
    ]
    if replay:  # deepest first (units of channel groups have no call: they run without replay)
        cands.sort(key=lambda c: eng.graph.call(c.cid).start, reverse=True)
    eng.references()
    sources = {
        c.id: replay_sources(eng.graph, c) + _own(eng, c, cands[0]) if replay else [] for c in cands
    }
    wanted = set().union(*sources.values()) if sources else set()
    sums = {c.id: {"loss": 0.0, "kl": 0.0, "spvr": 0.0} for c in cands}
    measured_base = 0.0
    n_tokens = 0
    show = eng.progress if progress is None else progress
    bar = tqdm(
        total=len(eng.batches) * len(cands), desc="exact ablation", disable=not show, leave=False
    )
    with torch.no_grad():
        for i, n in enumerate(eng.sizes):
            ref_probs = _reference_probs(eng.refs[i])
            store: dict = {}
            if base_loss is None:
                with eng.alphas(eng.alpha_for(base)), eng.recording(wanted) as store:
                    measured_base += float(eng.batch_loss(i, eng.run(i))) * n
            for k, c in enumerate(cands):
                recording = base_loss is not None and k == 0
                with (
                    eng.alphas(eng.alpha_for([*base, c.id])),
                    (
                        eng.recording(wanted) if recording else eng.replaying(store, sources[c.id])
                    ) as rec,
                ):
                    out = eng.run(i)
                if recording:
                    store = rec
                loss, kl, spvr = _metrics(eng, i, out, ref_probs)
                sums[c.id]["loss"] += loss * n
                sums[c.id]["kl"] += kl
                sums[c.id]["spvr"] += spvr
                bar.update()
            lg = logits_of(eng.refs[i])
            w = _real_tokens(eng, i, lg[..., 0]) if lg is not None else None
            n_tokens += (
                n if lg is None else (float(w.sum()) if w is not None else int(lg[..., 0].numel()))
            )
    bar.close()
    total = sum(eng.sizes)
    L0 = measured_base / total if base_loss is None else base_loss
    order = {c.id: k for k, c in enumerate(eng.candidates)}
    return {
        cand_id: {"loss": s["loss"] / total - L0, "kl": s["kl"] / n_tokens, "spvr": s["spvr"]}
        for cand_id, s in sorted(sums.items(), key=lambda kv: order[kv[0]])
    }


def exact_rescore(eng: Engine, base_loss: float):
    """``rescore(rest, removed)`` for the greedy solver: the exact ΔL of each of ``rest`` given ``removed``
    already gone, relative to the original loss ``base_loss`` (ablation with replay)."""

    def rescore(rest: list[str], removed: list[str]) -> dict[str, float]:
        L = eng.loss(removed) if removed else base_loss
        return {
            k: v["loss"] + L - base_loss
            for k, v in ablate(eng, rest, base=removed, base_loss=L).items()
        }

    return rescore
