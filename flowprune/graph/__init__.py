"""Tracing a model into a FlowGraph and finding its removal candidates."""

from __future__ import annotations

from typing import Any

from torch import nn

from .candidates import Candidate
from .flowgraph import FlowGraph
from .trace import check_inputs, record, unwrap


def trace(model: nn.Module, example_inputs: Any) -> FlowGraph:
    """Run ``model`` once on ``example_inputs`` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs) and return its FlowGraph.  The model runs in eval mode without gradients and is
    left as it was.  A ``torch.compile``d model, ``nn.DataParallel`` or ``DistributedDataParallel`` is
    unwrapped first: the graph's model is the original module, and its paths have no wrapper prefix.

    >>> g = flowprune.trace(model, {"input_ids": ids})
    >>> g.nx.number_of_nodes(), len(g.candidates())
    """
    check_inputs(model, example_inputs)
    model = unwrap(model)
    rec, _ = record(model, example_inputs)
    return FlowGraph(model, example_inputs, rec)


__all__ = ["trace", "FlowGraph", "Candidate"]
