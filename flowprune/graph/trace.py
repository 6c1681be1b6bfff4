"""``trace(model, example_inputs)``: run one forward under a Recorder and return a FlowGraph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._runtime import call_model, eval_mode  # noqa: F401  (re-exported)
from .._tree import tensor_leaves
from ..errors import InputError, TraceError
from .recorder import Recorder


def unwrap(model: Any) -> Any:
    """The module a wrapper runs: ``torch.compile(m)`` -> ``m`` (``_orig_mod``), ``nn.DataParallel(m)`` and
    ``DistributedDataParallel(m)`` -> ``m`` (``.module``), repeatedly; anything else as it is.

    trace, analyze and apply all see the unwrapped model, so module paths carry no ``_orig_mod.`` /
    ``module.`` prefix and a plan made on a wrapper applies to the bare model and to any wrapper of it.
    Tracing runs the original eagerly (a TorchFunctionMode cannot observe compiled code).  Raises
    InputError for FSDP, whose parameters are sharded across processes.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if type(model).__name__.startswith("FullyShardedDataParallel") or type(
            model
        ).__name__.startswith("FSDP"):
            raise InputError(
                f"{type(model).__name__} shards the parameters across processes: trace, analyze "
                f"and prune the model before wrapping it in FSDP, then wrap the pruned model"
            )
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            model = model.module
        elif (
            isinstance(getattr(model, "_orig_mod", None), nn.Module)
            and type(model).__name__ == "OptimizedModule"
        ):
            model = model._orig_mod
        else:
            return model


def check_inputs(model: Any, example_inputs: Any) -> None:
    """Raise InputError unless ``model`` is an nn.Module and ``example_inputs`` a tensor, tuple or dict."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, list):
        raise InputError(
            "example_inputs is a list: pass a tuple for positional inputs, e.g. (x,), "
            "or a dict for keyword inputs, e.g. {'input_ids': ids}"
        )
    if not isinstance(example_inputs, (torch.Tensor, tuple, Mapping)):
        raise InputError(
            f"example_inputs must be a Tensor, a tuple of positional inputs or a dict of keyword "
            f"inputs, got {type(example_inputs).__name__}; for a tokenizer's BatchEncoding pass dict(enc)"
        )
    if not tensor_leaves(example_inputs):
        raise InputError("example_inputs contains no tensor: pass the model's real input tensors")
    devices = {p.device for p in model.parameters()}
    in_devices = {t.device for t in tensor_leaves(example_inputs)}
    if len(devices) == 1 and in_devices and in_devices != devices:
        raise InputError(
            f"example_inputs are on {sorted(map(str, in_devices))} but the model is on "
            f"{next(iter(devices))}: move them with .to(device)"
        )


def record(model: nn.Module, example_inputs: Any) -> tuple[Recorder, Any]:
    """Run ``model`` once under a Recorder (eval mode, no grad); return the recorder and the output."""
    rec = Recorder(model)
    rec.add_inputs(example_inputs)
    rec.install()
    try:
        with eval_mode(model), torch.no_grad(), rec:
            try:
                out = call_model(model, example_inputs)
            except Exception as e:  # name the innermost module that was running
                where = rec.stack[-1] if rec.stack else None
                loc = (
                    f"in module '{where.path or '<root>'}' ({where.type_name})"
                    if where
                    else "before any module ran"
                )
                raise TraceError(
                    f"the model raised {type(e).__name__} {loc} on example_inputs: {e}. "
                    f"Check that example_inputs match what model.forward expects "
                    f"(shapes, dtypes, keyword names)."
                ) from e
    finally:
        rec.remove()
    rec.add_output(out)
    return rec, out
