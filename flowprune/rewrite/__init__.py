"""Rewriting a model so a plan's removals are physically gone."""

from .rewriter import apply, apply_
from .stubs import Removed

__all__ = ["apply", "apply_", "Removed"]
