"""save_pretrained / load_pretrained for pruned Hugging Face models: safetensors + config + plans, no pickle.

A plan that only deletes layers is expressed by the config alone (``num_hidden_layers`` and per-layer
lists are kept in sync), so plain ``from_pretrained`` reloads it.  Other removals (branches, fills,
identity layers) are written as ``flowprune.json`` next to the weights; ``load_pretrained`` loads the
config's architecture with ``from_pretrained``, re-applies those replacements (paths mapped through the
layer deletions) and loads the stubs' own tensors (fills) from the safetensors files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ._version import __version__
from .errors import InputError, PlanError
from .plan import Plan

META = "flowprune.json"


@contextmanager
def _quiet_transformers():
    """No progress bars or load reports from transformers (stubbed weights are absent on purpose)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def save_pretrained(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``directory`` atomically: written to a temporary folder
    next to it, then renamed; an existing folder is replaced only once the new one is complete.

    >>> flowprune.save_pretrained(small, "pruned/", tokenizer=tok)
    >>> same = flowprune.load_pretrained("pruned/")
    """
    if not hasattr(model, "save_pretrained"):
        raise InputError(f"save_pretrained needs a Hugging Face model (PreTrainedModel), got {type(model).__name__}; "
                         f"for other models save plan.to_json() and the state_dict with safetensors")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)  # safetensors
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plans: list[Plan] = list(getattr(model, "flowprune_plans", []))
        if any(r.mode != "delete" for p in plans for r in p.replacements):
            meta = {"flowprune": __version__, "plans": [json.loads(p.to_json()) for p in plans]}
            (tmp / META).write_text(json.dumps(meta, indent=1))
        tmp.chmod(0o755)
        if directory.exists():  # swap: the old folder is gone only once the new one is in place
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            directory.rename(old / "x")
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _map_path(path: str, deletions: dict[str, list[int]]) -> str | None:
    """Where ``path`` is after the deletions ({stack path: removed indices}); None if it was deleted."""
    for stack, removed in deletions.items():
        prefix = stack + "."
        if path.startswith(prefix):
            head, _, rest = path[len(prefix):].partition(".")
            if head.isdigit():
                i = int(head)
                if i in removed:
                    return None
                j = i - sum(r < i for r in removed)
                return f"{stack}.{j}" + (f".{rest}" if rest else "")
    return path


def load_pretrained(directory: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a model written by ``save_pretrained`` (``kwargs`` go to ``from_pretrained``), in eval mode."""
    import transformers
    from safetensors.torch import load_file

    from .rewrite.rewriter import make_stub

    directory = Path(directory)
    config = transformers.AutoConfig.from_pretrained(directory)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise PlanError(f"{directory}/config.json names no known architecture ({archs}): load it with its model class")
    with _quiet_transformers():
        model = cls.from_pretrained(directory, **kwargs)
    meta_path = directory / META
    if not meta_path.exists():
        return model.eval()
    plans = [Plan.from_json(json.dumps(p)) for p in json.loads(meta_path.read_text())["plans"]]
    for k, plan in enumerate(plans):
        later = [_deletions(p) for p in plans[k:]]
        modules = dict(model.named_modules())
        for rep in plan.replacements:
            if rep.mode == "delete":
                continue
            path: str | None = rep.path
            for dels in later:
                path = _map_path(path, dels) if path is not None else None
            if path is None:
                continue
            parent, _, name = path.rpartition(".")
            if path not in modules:
                raise PlanError(f"{META} replaces '{path}', which the loaded model does not have")
            setattr(modules[parent], name, make_stub(rep, modules[path]))
    stubs = {n: m for n, m in model.named_modules() if type(m).__name__ == "Removed"}
    needed = {f"{n}.{k}" for n, m in stubs.items() for k in m.state_dict()}
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update({k: v for k, v in load_file(f).items() if k in needed})
    if needed - set(state):
        raise PlanError(f"{directory} lacks the fitted fills {sorted(needed - set(state))[:5]}: "
                        f"was it written by flowprune.save_pretrained?")
    model.load_state_dict(state, strict=False)
    model.flowprune_plans = plans
    return model.eval()


def _deletions(plan: Plan) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in plan.replacements:
        if r.mode == "delete":
            stack, _, i = r.path.rpartition(".")
            out.setdefault(stack, []).append(int(i))
    return out
