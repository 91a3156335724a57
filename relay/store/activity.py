"""
The activity log (docs/design.md §9): one row per recipient of each
transaction, metadata only, written by the relay in batches and searched
by the portal and the API, newest first, a page at a time.

Pages are cut by row id: a cursor is the last id a page showed, so new
rows arriving meanwhile neither repeat nor shift what comes next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session

from relay.store.errors import Invalid, NotFound
from relay.store.models import Activity, Tenant
from relay.store.repository import rowcount

__all__ = ["ActivityLog", "ActivityRow", "MAX_PAGE"]

MAX_PAGE = 500
RESULTS = ("relayed", "rejected", "tempfailed", "aborted")


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One recipient's outcome (addresses already redacted as the relay logs them)."""

    tenant: str
    at: datetime
    queueId: str
    messageId: str | None
    sender: str
    recipient: str
    size: int
    upstream: str | None
    reply: str
    result: str
    id: int | None = None


class ActivityLog:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._tenantIds: dict[str, int] = {}

    def record(self, rows: Sequence[ActivityRow]) -> int:
        """Add rows in one transaction (rows of tenants deleted meanwhile are dropped); how many were added."""
        if not rows:
            return 0
        with Session(self._engine) as session, session.begin():
            missing = {row.tenant for row in rows} - self._tenantIds.keys()
            if missing:
                found = session.execute(select(Tenant.name, Tenant.id).where(Tenant.name.in_(missing)))
                self._tenantIds.update((name, tenantId) for name, tenantId in found)
            values = [
                {
                    "tenant_id": self._tenantIds[row.tenant],
                    "at": row.at,
                    "queue_id": row.queueId,
                    "message_id": row.messageId,
                    "sender": row.sender,
                    "recipient": row.recipient,
                    "size": row.size,
                    "upstream": row.upstream,
                    "reply": row.reply,
                    "result": row.result,
                }
                for row in rows
                if row.tenant in self._tenantIds
            ]
            if values:
                session.execute(insert(Activity), values)
            return len(values)

    def forget(self, tenant: str) -> None:
        """A tenant was deleted: its id is not to be reused for new rows."""
        self._tenantIds.pop(tenant, None)

    def search(
        self,
        tenant: str,
        *,
        queueId: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        result: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[ActivityRow], int | None]:
        """
        A page of a tenant's activity, newest first, and the cursor of the
        next page (C{None} at the end).  Sender and recipient match a
        substring, case-insensitive.

        @raise NotFound: no such tenant.
        @raise Invalid: a bad result or page size.
        """
        if result is not None and result not in RESULTS:
            raise Invalid(f"result is one of {', '.join(RESULTS)}")
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit is 1 to {MAX_PAGE}")
        with Session(self._engine) as session, session.begin():
            tenantId = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).first()
            if tenantId is None:
                raise NotFound(f"unknown tenant {tenant!r}")
            query = select(Activity).where(Activity.tenant_id == tenantId)
            if queueId:
                query = query.where(Activity.queue_id == queueId.strip().upper())
            if sender:
                query = query.where(func.lower(Activity.sender).contains(sender.strip().lower(), autoescape=True))
            if recipient:
                query = query.where(func.lower(Activity.recipient).contains(recipient.strip().lower(), autoescape=True))
            if result:
                query = query.where(Activity.result == result)
            if since:
                query = query.where(Activity.at >= since)
            if until:
                query = query.where(Activity.at < until)
            if cursor is not None:
                query = query.where(Activity.id < cursor)
            found = list(session.scalars(query.order_by(Activity.id.desc()).limit(limit + 1)))
            rows = [_row(tenant, record) for record in found[:limit]]
            return rows, (rows[-1].id if len(found) > limit else None)

    def everything(self, tenant: str) -> Iterable[ActivityRow]:
        """Every row of a tenant, oldest first (for its export)."""
        with Session(self._engine) as session, session.begin():
            query = select(Activity).join(Tenant).where(Tenant.name == tenant).order_by(Activity.id)
            return [_row(tenant, record) for record in session.scalars(query)]

    def purge(self, defaultDays: int, now: datetime | None = None) -> int:
        """Drop rows older than each tenant's retention (its own or C{defaultDays}); how many went."""
        now = now or datetime.now(UTC)
        gone = 0
        with Session(self._engine) as session, session.begin():
            for tenantId, days in session.execute(select(Tenant.id, Tenant.activity_retention_days)):
                cutoff = now - timedelta(days=days or defaultDays)
                gone += rowcount(
                    session.execute(delete(Activity).where(Activity.tenant_id == tenantId, Activity.at < cutoff))
                )
        return gone


def _row(tenant: str, record: Activity) -> ActivityRow:
    return ActivityRow(
        tenant=tenant,
        at=record.at,
        queueId=record.queue_id,
        messageId=record.message_id,
        sender=record.sender,
        recipient=record.recipient,
        size=record.size,
        upstream=record.upstream,
        reply=record.reply,
        result=record.result,
        id=record.id,
    )
