"""Image classification data for CNN and ViT experiments: CIFAR-10 through ``datasets`` (online or its
cache), CIFAR-10 from a local directory of the standard python-pickle batches, or scikit-learn's
digits upscaled to 32×32 RGB (always available).  Every loader returns ``(x, y)``: float images
[N, 3, 32, 32] normalised per channel, and int64 labels [N]."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

# CIFAR-10 channel statistics (of its training set), the usual normalisation
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    # x: [N, 3, H, W] in [0, 1]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _take(
    x: torch.Tensor, y: torch.Tensor, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if num_samples is None else (x[:num_samples], y[:num_samples])


def cifar10_local(
    root: str | os.PathLike, split: str = "train", num_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``root`` holding the python-pickle batches (``data_batch_1`` … ``data_batch_5``,
    ``test_batch``), or its ``cifar-10-batches-py`` subdirectory.

    >>> x, y = cifar10_local("~/data/cifar-10-batches-py", "test")
    """
    root = Path(root).expanduser()
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(
            f"{root} has no CIFAR-10 batches {missing}: pass the directory that holds "
            f"data_batch_1..5 and test_batch (the 'CIFAR-10 python version' archive, unpacked)"
        )
    xs, ys = [], []
    for n in names:
        with open(root / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(
            np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        )  # rows: R(1024) G B
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float() / 255
    return _take(
        _normalise(x, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(np.concatenate(ys)), num_samples
    )


def cifar10_hub(
    split: str = "train", num_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 through ``datasets.load_dataset("cifar10")``: needs the Hugging Face hub or its cache."""
    try:
        import datasets

        ds = datasets.load_dataset("cifar10", split=split)
    except Exception as e:  # offline, no cache
        raise InputError(
            f"could not load cifar10 from the hub ({type(e).__name__}: {str(e)[:160]}); offline, "
            f"use cifar10_local(DIR) with the python-pickle batches or digits32()"
        ) from e
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    key = "img" if "img" in ds.column_names else "image"
    x = torch.from_numpy(
        np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in ds[key]])
    )
    x = x.permute(0, 3, 1, 2).float() / 255  # [N, H, W, 3] -> [N, 3, H, W]
    return _normalise(x, CIFAR_MEAN, CIFAR_STD), torch.tensor(ds["label"], dtype=torch.int64)


def digits32(
    split: str = "train", num_samples: int | None = None, test_fraction: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits (8×8, 10 classes) upscaled bilinearly to 32×32 and copied
    to 3 channels: a CIFAR-shaped task that needs no download.  A fixed shuffled split.

    >>> x, y = digits32("test")     # x: [450, 3, 32, 32]
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise InputError("digits32 needs scikit-learn: pip install scikit-learn") from e
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(len(y) * (1 - test_fraction))
    idx = order[:cut] if split == "train" else order[cut:]
    x = (x - x[order[:cut]].mean()) / x[
        order[:cut]
    ].std()  # the training split's statistics, for both
    return _take(x[idx], y[idx], num_samples)


def image_classification(
    root: str | os.PathLike | None = None, num_train: int | None = None, num_test: int | None = None
) -> tuple[tuple, tuple, str]:
    """(train (x, y), test (x, y), source): CIFAR-10 from ``root`` (or the ``FLOWPRUNE_CIFAR10``
    directory) when one is given, else through ``datasets`` (the hub or its cache), else digits32;
    ``source`` says which.

    >>> (xtr, ytr), (xte, yte), source = image_classification(num_train=5000)
    """
    tried = []
    root = root or os.environ.get("FLOWPRUNE_CIFAR10")
    if root:
        try:
            return (
                cifar10_local(root, "train", num_train),
                cifar10_local(root, "test", num_test),
                f"CIFAR-10 ({root})",
            )
        except InputError as e:
            tried.append(str(e))
    try:  # offline (HF_DATASETS_OFFLINE=1) this still finds a cached copy, and fails at once without one
        return cifar10_hub("train", num_train), cifar10_hub("test", num_test), "CIFAR-10 (datasets)"
    except InputError as e:
        tried.append(str(e).split(";")[0])
    source = (
        "scikit-learn digits upscaled to 32×32 (CIFAR-10 unavailable: " + "; ".join(tried) + ")"
    )
    return digits32("train", num_train), digits32("test", num_test), source
