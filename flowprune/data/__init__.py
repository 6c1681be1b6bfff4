"""Calibration data: turn what users pass (batches, a DataLoader, a ``datasets.Dataset``) into a list
of batches, and split a batch into model inputs and labels."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Iterable

import torch

from .._tree import tensor_leaves
from ..errors import InputError

LABEL_KEYS = ("labels", "label")
STREAM_SAMPLES = 256  # samples read from an iterator without a length when num_samples is not given


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(model inputs, labels).  A dict's ``labels``/``label`` entry is the label; a 2-tuple
    ``(inputs, labels)`` whose second item is a 1-D integer tensor with one entry per sample is a
    classification batch; a tensor or any other tuple (e.g. ``(input_ids, attention_mask)``) has no labels."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}, labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and _are_labels(batch[0], batch[1]):
        x = batch[0]
        return (x if isinstance(x, (torch.Tensor, Mapping)) else tuple(x)), batch[1]
    if isinstance(batch, (tuple, list)):
        return tuple(batch), None
    raise InputError(
        f"a batch must be a tensor, a tuple or a dict of tensors, got {type(batch).__name__}"
    )


def _are_labels(x: Any, y: Any) -> bool:
    leaves = tensor_leaves(x)
    return (
        isinstance(y, torch.Tensor)
        and not y.is_floating_point()
        and y.dim() == 1
        and bool(leaves)
        and leaves[0].dim() > 0
        and len(y) == leaves[0].shape[0]
    )


def batch_size(batch: Any) -> int:
    """Number of samples: the first dimension of the batch's first tensor."""
    leaves = tensor_leaves(split_batch(batch)[0])
    return int(leaves[0].shape[0]) if leaves and leaves[0].dim() else 1


def _from_dataset(ds: Any, batch_size_: int) -> list[dict]:
    ds = ds.with_format("torch")
    cols = [c for c in ds.column_names if isinstance(ds[0][c], torch.Tensor)]
    if not cols:
        raise InputError(
            "the dataset has no tensor columns: tokenize it first (e.g. ds.map(tokenizer))"
        )
    return [{c: ds[i : i + batch_size_][c] for c in cols} for i in range(0, len(ds), batch_size_)]


def as_batches(data: Any, num_samples: int | None = None, batch_size_: int = 8) -> list:
    """A list of batches with at most ``num_samples`` samples in all (the last batch is cut).

    >>> as_batches(torch.randn(10, 4), num_samples=6, batch_size_=4)   # a tensor is split in batches
    """
    try:
        import datasets

        is_ds = isinstance(data, datasets.Dataset)
    except ImportError:  # pragma: no cover - datasets is a dependency
        is_ds = False
    if is_ds:
        batches: Iterable = _from_dataset(data, batch_size_)
    elif isinstance(data, torch.Tensor):
        batches = list(data.split(batch_size_))
    elif isinstance(data, (Mapping, tuple)):
        batches = [data]
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise InputError(
            f"data must be an iterable of batches, a DataLoader, a datasets.Dataset or a tensor, "
            f"got {type(data).__name__}"
        )
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise InputError(
            f"num_samples={num_samples!r}: a whole number of samples ≥ 1 (or None for all)"
        )
    cap = num_samples
    if cap is None and not _has_len(batches):
        cap = STREAM_SAMPLES  # a stream (generator, IterableDataset) may never end
    out, n = [], 0
    for b in batches:
        if cap is not None and n >= cap:
            if num_samples is None:
                warnings.warn(
                    f"read the first {cap} samples of a stream without a length and stopped: "
                    f"pass num_samples= to read more or fewer",
                    stacklevel=2,
                )
            break
        size = batch_size(b)
        if cap is not None and n + size > cap:
            b = _cut(b, cap - n)
            size = cap - n
        _check_finite(b, len(out))
        out.append(b)
        n += size
    if not out:
        raise InputError("data gave no batch: pass at least one batch of calibration inputs")
    return out


def _has_len(obj: Any) -> bool:
    try:
        len(obj)  # a DataLoader over an IterableDataset has __len__ but raises TypeError
        return True
    except TypeError:
        return False


def _check_finite(batch: Any, index: int) -> None:
    """InputError naming calibration batch ``index`` when one of its floating tensors holds NaN or inf."""
    for t in tensor_leaves(batch):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(
                f"calibration batch {index} contains NaN or inf ({int((~torch.isfinite(t)).sum())} "
                f"values in a {list(t.shape)} tensor): clean or drop that batch"
            )


def _cut(batch: Any, k: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:k]
    if isinstance(batch, Mapping):
        return {key: _cut(v, k) for key, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cut(v, k) for v in batch)
    return batch


from .text import python_docs, python_docs_text, text_files, wikitext  # noqa: E402


def __getattr__(name: str):
    """``flowprune.data.perplexity`` / ``similarity``: moved to ``flowprune.score`` (old names kept one
    release, with a DeprecationWarning)."""
    if name in ("perplexity", "similarity"):
        import importlib
        import warnings

        warnings.warn(
            f"flowprune.data.{name} moved to flowprune.score.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("flowprune.score.quality"), name)
    raise AttributeError(f"module 'flowprune.data' has no attribute {name!r}")


__all__ = [
    "as_batches",
    "split_batch",
    "batch_size",
    "wikitext",
    "python_docs",
    "python_docs_text",
    "text_files",
]
