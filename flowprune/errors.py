"""Exceptions raised by flowprune. Each message names the cause and what to do instead."""

from __future__ import annotations


class FlowpruneError(Exception):
    """Base class of every flowprune error."""


class InputError(FlowpruneError, TypeError):
    """Arguments of the wrong type or shape (example inputs, data, budgets)."""


class TraceError(FlowpruneError, RuntimeError):
    """The model raised while flowprune ran it; the message names the module that raised."""


class PlanError(FlowpruneError, ValueError):
    """A plan does not fit the model it is applied to (unknown module, other model, bad JSON)."""


class CheckpointError(PlanError):
    """A saved model folder is incomplete, corrupt, modified or not written by flowprune.save_pretrained."""


class CandidateError(FlowpruneError, KeyError):
    """A candidate id that the graph (or the gates) does not have; the message lists close ids."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
