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
