"""Image data for the CNN notebook: CIFAR-10's python-pickle batches, the digits fallback, the chooser."""

import pickle

import numpy as np
import pytest
import torch

from flowprune.data.images import (
    CIFAR_MEAN,
    CIFAR_STD,
    cifar10_local,
    digits32,
    image_classification,
)
from flowprune.errors import InputError


def _fake_cifar(root, n=4):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.zeros((n, 3072), dtype=np.uint8)
        data[:, :1024] = 255  # red plane full, green and blue empty
        data[0, 1024] = 51  # sample 0: green at pixel (0, 0) = 0.2
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [(k + j) % 10 for j in range(n)]}, f)
    return d


def test_cifar_pickle_batches_are_read_channel_first_and_normalised(tmp_path):
    _fake_cifar(tmp_path)
    x, y = cifar10_local(tmp_path, "train")  # finds the cifar-10-batches-py subdirectory
    assert x.shape == (20, 3, 32, 32) and y.dtype == torch.int64 and y[:4].tolist() == [0, 1, 2, 3]
    assert x[0, 0, 5, 5].item() == pytest.approx((1 - CIFAR_MEAN[0]) / CIFAR_STD[0], rel=1e-5)
    assert x[0, 1, 0, 0].item() == pytest.approx((0.2 - CIFAR_MEAN[1]) / CIFAR_STD[1], rel=1e-5)
    assert x[1, 1, 0, 0].item() == pytest.approx(-CIFAR_MEAN[1] / CIFAR_STD[1], rel=1e-5)
    xt, yt = cifar10_local(tmp_path / "cifar-10-batches-py", "test", num_samples=3)
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == [5, 6, 7]


def test_missing_batches_name_what_is_needed(tmp_path):
    with pytest.raises(InputError, match="data_batch_1"):
        cifar10_local(tmp_path, "train")


def test_digits32_is_a_fixed_disjoint_split():
    xtr, ytr = digits32("train")
    xte, yte = digits32("test")
    assert xtr.shape[1:] == xte.shape[1:] == (3, 32, 32) and len(ytr) + len(yte) == 1797
    assert torch.equal(digits32("test")[0], xte)  # deterministic
    assert set(ytr.tolist()) == set(range(10)) and abs(float(xtr.mean())) < 1e-5


def test_chooser_prefers_a_local_directory_and_falls_back_to_digits(tmp_path, monkeypatch):
    _fake_cifar(tmp_path)
    (tr, te, source) = image_classification(root=tmp_path)
    assert source.startswith("CIFAR-10 (") and tr[0].shape[0] == 20
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("FLOWPRUNE_CIFAR10", raising=False)
    (tr, te, source) = image_classification(num_train=10)
    assert (
        source.startswith("scikit-learn digits")
        and "could not load cifar10" in source
        and tr[0].shape == (10, 3, 32, 32)
    )
