"""flowprune: trace how information flows through a network and remove what it does not need.

>>> import flowprune
>>> graph = flowprune.trace(model, example_inputs)
>>> plan = graph.plan([c.id for c in graph.candidates("layer")][:2])
>>> small = flowprune.apply(model, plan)
"""

from ._version import __version__
from .api import analyze, prune
from .errors import CheckpointError, FlowpruneError, InputError, PlanError, TraceError
from .gates import Gates
from .graph import Candidate, FlowGraph, trace
from .plan import Plan
from .report import Report
from .rewrite import apply, apply_
from .saving import load_pretrained, save_pretrained
from .solve import Budget

__all__ = [
    "__version__",
    "trace",
    "analyze",
    "prune",
    "Report",
    "Budget",
    "FlowGraph",
    "Candidate",
    "Gates",
    "Plan",
    "apply",
    "apply_",
    "save_pretrained",
    "load_pretrained",
    "FlowpruneError",
    "InputError",
    "PlanError",
    "TraceError",
    "CheckpointError",
]
