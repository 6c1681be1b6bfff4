"""Wall time of one forward: the latency column of plans (before and after the rewrite)."""

from __future__ import annotations

import statistics
import time
from itertools import chain
from typing import Any

import torch
from torch import nn

from ._runtime import call_model, eval_mode


def latency(model: nn.Module, inputs: Any, repeats: int = 5) -> float:
    """Median seconds of one ``model(inputs)`` under no_grad in eval mode, after one warm-up call
    (CUDA work on every device of the model is synchronised before each clock read).

    >>> latency(model, batch)
    0.0123
    """
    devices = {t.device for t in chain(model.parameters(), model.buffers()) if t.is_cuda}

    def sync() -> None:  # every device the model lives on (device_map spreads it)
        for d in devices:
            torch.cuda.synchronize(d)

    times = []
    with torch.no_grad(), eval_mode(model):
        for k in range(repeats + 1):
            sync()
            t = time.perf_counter()
            call_model(model, inputs)
            sync()
            if k:  # the first call warms caches and lazy initialisation
                times.append(time.perf_counter() - t)
    return statistics.median(times)
