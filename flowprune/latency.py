"""Wall time of one forward: the latency column of plans (before and after the rewrite)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


def latency(model: nn.Module, inputs: Any, repeats: int = 5) -> float:
    """Median seconds of one ``model(inputs)`` under no_grad in eval mode, after one warm-up call
    (CUDA work is synchronised before each clock read).

    >>> latency(model, batch)
    0.0123
    """
    from .graph.trace import call_model, eval_mode

    cuda = any(p.is_cuda for p in model.parameters())
    times = []
    with torch.no_grad(), eval_mode(model):
        for k in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            call_model(model, inputs)
            if cuda:
                torch.cuda.synchronize()
            if k:  # the first call warms caches and lazy initialisation
                times.append(time.perf_counter() - t)
    return statistics.median(times)
