"""Plan: a frozen, JSON-serialisable list of removals keyed by module path, with the replacements the
rewriter makes, the flowprune version and a fingerprint of the model it was made for.

A Plan is self-contained: ``flowprune.apply`` needs no trace and no data, so a plan saved next to
weights can be replayed on a freshly built model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from torch import nn

from ._version import __version__
from .errors import PlanError

if TYPE_CHECKING:
    from .graph import FlowGraph

PLAN_SCHEMA = 2  # the plan JSON's own version (a report has REPORT_SCHEMA); 2: channel slices


def fingerprint(model: nn.Module) -> str:
    """Hash of the model class and its state_dict names and shapes (not values: dtype/device casts keep it)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Replacement:
    """One module to swap: ``mode`` is ``zeros`` (stub returning zeros), ``mean``/``linear`` (a removed
    branch with a compensation fill), ``identity`` or ``delete``.  ``out_index``: the output tensor a fill
    applies to; ``shape``: the fill's shape (mean) or ``[in_channels, out_channels, channel_dim]``
    (linear: a map over ``channel_dim``, 1 for [B, C, H, W], -1 for [B, T, D]; plans written before the
    third entry existed mean -1).

    ``calls``/``ncalls``: set for a module called several times per forward (shared weights).  The module
    runs ``ncalls`` times per forward in the rewritten model; the calls ``calls`` (0-based, in forward
    order) are skipped (``mode`` "identity": return the input; "zeros": zeros) and the others run it (the
    module stays, skipping those calls itself: rewrite/calls.py).  When ``calls`` holds every call the
    module is replaced outright (its parameters go), wherever the model holds it (a list may hold it
    twice).  In plan JSON the two keys are
    left out when unset, e.g. ``{"path": "encoder.layer", "mode": "identity", "structure": {"t": "input"},
    "out_index": 0, "shape": null, "calls": [2], "ncalls": 4}``."""

    path: str
    mode: str
    structure: dict | None = None
    out_index: int = 0
    shape: list | None = None
    calls: list | None = None
    ncalls: int | None = None

    @property
    def every_call(self) -> bool:
        """A per-call replacement that skips every call: the module goes (None -> not per-call)."""
        return self.calls is not None and set(range(self.ncalls or 0)) <= set(self.calls)


@dataclass(frozen=True)
class Removal:
    """One removed candidate."""

    id: str
    kind: str
    path: str
    params: int
    flops: int


@dataclass(frozen=True)
class Slice:
    """Keep only ``keep`` (indices along ``dim``) of parameter or buffer ``param`` (a state_dict name).

    >>> Slice("fc1.weight", 0, (0, 2, 3))
    """

    param: str
    dim: int
    keep: tuple[int, ...]


@dataclass(frozen=True)
class Attr:
    """Set ``module.attr = value`` after slicing (head counts of an attention module, ...)."""

    module: str
    attr: str
    value: int


@dataclass(frozen=True)
class Units:
    """Units removed from one channel group (``units``: their indices in the group)."""

    group: str
    kind: str
    units: tuple[int, ...]
    of: int  # the group's unit count before


@dataclass(frozen=True)
class Plan:
    """What to remove from which model.  Build with ``graph.plan(ids)``; apply with ``flowprune.apply``.

    >>> plan = flowprune.trace(model, x).plan(["blocks.1:layer"])
    >>> Plan.from_json(plan.to_json()) == plan
    True
    """

    removals: tuple[Removal, ...]
    replacements: tuple[Replacement, ...]
    fingerprint: str
    model_class: str
    params_before: int
    params_removed: int
    flops_before: int
    flops_removed: int
    version: str = __version__
    schema: int = PLAN_SCHEMA
    # channel groups: removed units, and the slices and attribute values that remove them
    units: tuple[Units, ...] = ()
    slices: tuple[Slice, ...] = ()
    attrs: tuple[Attr, ...] = ()
    # how the consumers of removed units are refitted at apply time on calibration data ("none",
    # "obs", "mean"; flowprune.channels.compensate), and which weights are those consumers
    compensation: str = "none"
    consumers: tuple[str, ...] = ()

    @classmethod
    def from_graph(cls, graph: "FlowGraph", ids: Sequence[str], fill: str = "zeros") -> "Plan":
        cands = [graph.candidate(i) for i in dict.fromkeys(ids)]
        eff = graph.effect([c.id for c in cands], fill)
        if eff.fill_params and eff.params < 0:
            warnings.warn(
                f"fill={fill!r} adds {eff.fill_params:,} parameters, more than the {len(cands)} removals "
                f"save: the plan grows the model by {-eff.params:,} parameters "
                f"({signed(eff.params, graph.total_params)}); use fill='mean' or fill='zeros'",
                UserWarning,
                stacklevel=3,
            )
        return cls(
            removals=tuple(Removal(c.id, c.kind, c.path, c.params, c.flops) for c in cands),
            replacements=eff.replacements,
            fingerprint=graph.fingerprint,
            model_class=type(graph.model).__name__,
            params_before=graph.total_params,
            params_removed=eff.params,
            flops_before=graph.total_flops,
            flops_removed=eff.flops,
        )

    @property
    def fills(self) -> list[Replacement]:
        """Replacements whose values are fitted on calibration data at apply time."""
        return [r for r in self.replacements if r.mode in ("mean", "linear")]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.removals]

    def to_dict(self) -> dict:
        d = asdict(self)
        for r in d["replacements"]:  # per-call keys only where used: other plans read as before
            for k in ("calls", "ncalls"):
                if r.get(k) is None:
                    r.pop(k, None)
        return d

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The plan as JSON; also written atomically to ``path`` if given."""
        return dump_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "Plan":
        """Read a plan from a JSON string or a file path."""
        try:
            d = load_json(text_or_path)
        except json.JSONDecodeError as e:
            raise PlanError(f"not a flowprune plan: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """A plan from its ``to_dict`` form (PlanError if it is not one)."""
        try:
            if d.get("schema", PLAN_SCHEMA) > PLAN_SCHEMA:
                raise PlanError(
                    f"plan schema {d['schema']} is newer than this flowprune ({__version__}) reads; "
                    f"upgrade flowprune"
                )
            d = dict(d)
            d["removals"] = tuple(Removal(**r) for r in d["removals"])
            d["replacements"] = tuple(Replacement(**r) for r in d["replacements"])
            d["units"] = tuple(
                Units(**{**u, "units": tuple(u["units"])}) for u in d.get("units", ())
            )
            d["slices"] = tuple(
                Slice(**{**x, "keep": tuple(x["keep"])}) for x in d.get("slices", ())
            )
            d["attrs"] = tuple(Attr(**a) for a in d.get("attrs", ()))
            d["consumers"] = tuple(d.get("consumers", ()))
            return cls(**d)
        except (KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"not a flowprune plan: {e}") from e

    def __str__(self) -> str:
        lines = [
            f"Plan for {self.model_class} ({self.fingerprint}): {len(self.removals)} removals"
            + (f", {sum(len(u.units) for u in self.units)} units" if self.units else "")
            + f", {signed(self.params_removed)} of {self.params_before:,} params, "
            f"{signed(self.flops_removed, self.flops_before)} FLOPs"
        ]
        lines += [f"  - {r.id}  ({r.params:,} params)" for r in self.removals]
        lines += [f"  - {u.group}: {len(u.units)} of {u.of} {u.kind}" for u in self.units]
        return "\n".join(lines)


def signed(removed: float, before: float | None = None, minus: str = "-") -> str:
    """An amount removed as a signed change: a saving is negative, a growth (fills adding more than the
    removals save) positive.  With ``before``, as a percentage of it.

    >>> signed(1234), signed(-1234), signed(94, 1000), signed(-94, 1000)
    ('-1,234', '+1,234', '-9.4%', '+9.4%')
    """
    sign = minus if removed >= 0 else "+"
    return (
        f"{sign}{abs(removed) / max(before, 1):.1%}"
        if before is not None
        else f"{sign}{abs(removed):,}"
    )


def dump_json(obj: dict, path: str | os.PathLike | None = None) -> str:
    """``obj`` as indented JSON; also written atomically to ``path`` if given."""
    text = json.dumps(obj, indent=1)
    if path is not None:
        write_atomic(Path(path), text)
    return text


def load_json(text_or_path: str | os.PathLike) -> dict:
    """Parse a JSON string, or the file at a path."""
    text = str(text_or_path)
    if not text.lstrip().startswith("{"):
        text = Path(text_or_path).read_text()
    return json.loads(text)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
