"""Running a model the way every part of flowprune does: one calling convention for example inputs and
batches, and eval mode that gives each module its own flag back.  Imports nothing else of flowprune, so
every layer may use it."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict.

    >>> call_model(model, {"input_ids": ids})   # model(input_ids=ids)
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval() (dropout off, BatchNorm on running stats) and restore each module's flag after.

    >>> with eval_mode(model): out = model(x)
    """
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f
