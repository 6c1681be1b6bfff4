"""What a stub keeps of the module it replaces, for code that reads attributes of a child module.

Parents inspect their children outside ``forward``: ``nn.TransformerEncoder`` reads
``layers[0].self_attn.batch_first``; ``nn.TransformerEncoderLayer``'s fast-path check compares
``norm1.eps`` with ``norm2.eps`` and collects ``self_attn.in_proj_weight``, ``norm1.weight``, ... to
hand them to one fused kernel; HF T5 casts its input to ``wo.weight.dtype``; a Mamba block reads its
mixer's weights' dtype.  A stub must answer these reads, but without keeping the weights:

* plain attributes (numbers, strings, dtypes, tuples of those) are kept as they were;
* a parameter or buffer becomes a ``RemovedTensor``: a zero-stride placeholder with the original's
  shape, dtype and device and no storage.  Reading its metadata works; computing with it raises.
  It overrides ``__torch_function__``, so every PyTorch fast path that fuses the children's weights
  sees ``has_torch_function(weights)`` and declines — exactly PyTorch's own rule for arguments that
  are not plain tensors.  The parent then runs its ordinary Python path, which calls the stub: the
  rewritten model computes what the gated model computes (the gates' hooks disable the same fast
  paths), in eval and in train mode, instead of a fused kernel silently running removed weights;
* a submodule becomes a ``Shadow`` answering the same reads one level down.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"_is_hf_initialized"}
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)
# tensor reads that only look at metadata, allowed on a placeholder
_METADATA = frozenset(
    {
        "size",
        "dim",
        "numel",
        "nelement",
        "is_floating_point",
        "is_complex",
        "element_size",
        "stride",
        "is_contiguous",
        "__repr__",
        "__format__",
        "__len__",
        "get_device",
    }
)


class RemovedTensor(torch.Tensor):
    """Placeholder for a parameter of a removed module: metadata only, no storage, no arithmetic."""

    _where: str = "a removed module"

    @staticmethod
    def make(shape: tuple, dtype: torch.dtype, device: torch.device, where: str) -> "RemovedTensor":
        t = torch.zeros((), dtype=dtype, device=device).expand(shape).as_subclass(RemovedTensor)
        t._where = where
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (
            name in ("__get__", "__set__") or name in _METADATA
        ):  # .dtype, .shape, .device, .requires_grad
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        where = next((a._where for a in args if isinstance(a, RemovedTensor)), cls._where)
        raise RuntimeError(
            f"flowprune: {where} was removed by flowprune.apply, but the model still computes "
            f"with it ({name}); this module cannot be removed from this model"
        )


def _plain(v: Any) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if type(v) in (tuple, list):
        return all(_plain(x) for x in v)
    if type(v) is dict:
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def shadow_of(module: nn.Module | None, path: str = "") -> dict | None:
    """What readers of ``module`` may ask a stub standing in for it: plain attributes, tensor
    metadata ``(shape, dtype, device)`` and the same for submodules (None for no module)."""
    if module is None:
        return None
    attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS and _plain(v)}
    for cls in type(
        module
    ).__mro__:  # class-level settings (``attention_type = "sliding"``), plain properties
        if cls is nn.Module or cls is object:
            break
        for k, v in vars(cls).items():
            if k in attrs or k.startswith("__"):
                continue
            if isinstance(v, property):
                try:
                    v = getattr(module, k)
                except Exception:  # a property that needs more than the module's plain state
                    continue
            if _plain(v):
                attrs[k] = v
    tensors = {
        n: (tuple(t.shape), t.dtype, t.device)
        for n, t in list(module._parameters.items()) + list(module._buffers.items())
        if t is not None
    }
    nones = [
        n for n, t in list(module._parameters.items()) + list(module._buffers.items()) if t is None
    ]
    modules = {n: shadow_of(m) for n, m in module._modules.items() if m is not None}
    return {
        "type": type(module).__name__,
        "path": path,
        "attrs": attrs,
        "tensors": tensors,
        "none": nones,
        "modules": modules,
    }


def resolve(spec: dict | None, name: str, anchor: torch.Tensor | None, where: str) -> Any:
    """The value a stub (or a Shadow) answers for attribute ``name``; AttributeError if it has none."""
    if spec is None:
        raise AttributeError(name)
    if name in spec["attrs"]:
        return spec["attrs"][name]
    if name in spec["tensors"]:
        shape, dtype, device = spec["tensors"][name]
        if anchor is not None:  # follow model.to(device) / .half() done after the rewrite
            device = anchor.device
            dtype = (
                anchor.dtype
                if dtype.is_floating_point and anchor.dtype.is_floating_point
                else dtype
            )
        return RemovedTensor.make(shape, dtype, device, f"'{where}.{name}'")
    if name in spec["none"]:
        return None  # e.g. Linear(bias=False).bias
    if name in spec["modules"]:
        return Shadow(spec["modules"][name], anchor, f"{where}.{name}")
    raise AttributeError(name)


class Shadow:
    """A removed submodule as seen through a stub: answers attribute reads, cannot be called."""

    def __init__(self, spec: dict, anchor: torch.Tensor | None, where: str):
        self._spec, self._anchor, self._where = spec, anchor, where

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_spec", "_anchor", "_where"):
            raise AttributeError(name)
        try:
            return resolve(self._spec, name, self._anchor, self._where)
        except AttributeError:
            raise AttributeError(
                f"'{self._where}' ({self._spec['type']}) was removed by flowprune.apply and "
                f"had no attribute '{name}'"
            ) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"flowprune: '{self._where}' was removed by flowprune.apply, but the model still calls it"
        )

    def modules(
        self,
    ):  # parents that scan ``self.modules()`` for hooks (nn.TransformerEncoderLayer)
        return iter(())

    def __repr__(self) -> str:
        return f"Shadow(removed {self._spec['type']} '{self._where}')"
