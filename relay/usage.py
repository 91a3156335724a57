"""
Usage accounting: what each tenant relayed, counted per day (UTC).

The relay adds up L{UsageDelta}s in memory and hands them to the store in
batches (L{relay.store.repository.Store.recordUsage}), which adds them to
the day's totals; L{relay.store.repository.Store.usage} reads the totals
back as L{UsageRow}s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date

__all__ = ["COUNTERS", "UsageDelta", "UsageRow"]


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """
    Counts to add to a tenant's usage of one day.

    @ivar day: the UTC day the messages were relayed (or refused) on.
    @ivar relayed: messages the upstream accepted.
    @ivar recipients: recipients of those messages the upstream accepted.
    @ivar bytes: octets of those messages.
    @ivar rejected: messages refused with a 5xx (policy or upstream).
    @ivar failed: messages tempfailed (4xx) or aborted (client gone).
    """

    tenant: str
    day: date
    relayed: int = 0
    recipients: int = 0
    bytes: int = 0
    rejected: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class UsageRow(UsageDelta):
    """The totals of a tenant's day, as stored."""


COUNTERS = tuple(field.name for field in fields(UsageDelta))[2:]
"""The names of the counts, after C{tenant} and C{day}."""
