"""
The usage table's queries: adding a batch of deltas to the daily totals,
and reading the totals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import BigInteger, Connection, Date, Insert, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relay.store.errors import Invalid
from relay.store.models import Tenant, Usage
from relay.store.values import COUNTERS, UsageDelta, UsageRow

__all__ = ["addUsage", "readUsage"]

# A counter of relay.store.values and its column.
_COLUMNS = {
    "relayed": "messages_relayed",
    "recipients": "recipients_relayed",
    "bytes": "bytes_relayed",
    "rejected": "messages_rejected",
    "failed": "messages_failed",
}
assert tuple(_COLUMNS) == COUNTERS

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _summed(deltas: Iterable[UsageDelta]) -> list[dict[str, object]]:
    """
    The deltas added up by tenant and day (one upsert may not touch a row
    twice), as parameters of L{_upsert}, in tenant and day order (so that
    concurrent batches lock rows in one order).

    @raise Invalid: a count is negative.
    """
    totals: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0] * len(COUNTERS))
    for delta in deltas:
        counts = [getattr(delta, counter) for counter in COUNTERS]
        if min(counts) < 0:
            raise Invalid(f"negative usage {delta}")
        total = totals[delta.tenant, delta.day]
        total[:] = map(sum, zip(total, counts, strict=True))
    return [
        {"tenant": tenant, "day": day, **dict(zip(_COLUMNS.values(), counts, strict=True))}
        for (tenant, day), counts in sorted(totals.items())
    ]


def _upsert(dialect: str) -> Insert:
    """
    Add one tenant's day to the usage table:
    C{INSERT ... SELECT} the tenant's id by name (no row for an unknown
    tenant), C{ON CONFLICT} add to the counters.
    """
    columns = list(_COLUMNS.values())
    source = select(
        Tenant.id, bindparam("day", type_=Date), *[bindparam(column, type_=BigInteger) for column in columns]
    ).where(Tenant.name == bindparam("tenant"))
    # Both dialects' inserts have on_conflict_do_update and excluded; their common base does not.
    statement: Any = _INSERTS[dialect](Usage).from_select(["tenant_id", "day", *columns], source)
    return statement.on_conflict_do_update(
        index_elements=[Usage.tenant_id, Usage.day],
        set_={column: getattr(Usage, column) + statement.excluded[column] for column in columns},
    )


def addUsage(connection: Connection, deltas: Iterable[UsageDelta]) -> None:
    """
    Add deltas to the stored totals, skipping unknown tenants.

    @raise Invalid: a count is negative.
    """
    parameters = _summed(deltas)
    if parameters:
        connection.execute(_upsert(connection.dialect.name), parameters)


def readUsage(session: Session, tenantId: int | None, since: date | None) -> list[UsageRow]:
    """The totals of one tenant (or all) from a day on (or all days), by tenant name and day."""
    query = select(Tenant.name, Usage.day, *[getattr(Usage, column) for column in _COLUMNS.values()]).join(Tenant)
    if tenantId is not None:
        query = query.where(Usage.tenant_id == tenantId)
    if since is not None:
        query = query.where(Usage.day >= since)
    return [UsageRow(*row) for row in session.execute(query.order_by(Tenant.name, Usage.day))]
