"""Channel groups: structured pruning inside layers (filters, neurons, attention heads).

``channel_groups(model, example_inputs)`` traces the model once with channel labels (``trace.py``,
rules in ``rules.py``), gathers coupled units into groups (``groups.py``) and checks each group: one
unit masked by :class:`UnitGates` (``mask.py``) must equal that unit sliced away (``slicing.py``); a
group failing the check is dropped with a warning naming it.

>>> groups = channel_groups(model, x)
>>> [(g.id, g.kind, g.units) for g in groups]
[('features.0.conv:channels', 'channels', 16), ...]
"""

from __future__ import annotations

from .check import Groups, channel_groups, check_groups
from .groups import ChannelGroup, Member
from .magnitude import magnitude_scores, select_units, unit_magnitude
from .mask import UnitGates
from .slicing import slice_, slices_for
from .trace import ChannelTrace

__all__ = [
    "channel_groups",
    "check_groups",
    "ChannelGroup",
    "Member",
    "Groups",
    "magnitude_scores",
    "select_units",
    "unit_magnitude",
    "UnitGates",
    "slice_",
    "slices_for",
    "ChannelTrace",
]
