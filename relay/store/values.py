"""
What the store's queries return: plain frozen values, never ORM objects,
so callers hold no session and no secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["TenantDetails", "TenantInfo", "UpstreamInfo"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantInfo:
    """
    A tenant's own fields.

    @ivar orgId: the 18-character Salesforce org id, or C{None}.
    @ivar status: C{"active"} or C{"suspended"}.
    @ivar createdAt: when it was added (UTC).
    """

    name: str
    email: str
    company: str
    orgId: str | None
    status: str
    createdAt: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamInfo:
    """
    One upstream as shown to operators.

    @ivar url: the URL with its password redacted (C{***}).
    @ivar priority: lowest is tried first.
    """

    url: str
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantDetails(TenantInfo):
    """
    A tenant with what belongs to it.

    @ivar logins: the user names, sorted.
    @ivar upstreams: in the order they are tried.
    @ivar domains: the allowed sender domains, sorted.
    """

    logins: tuple[str, ...]
    upstreams: tuple[UpstreamInfo, ...]
    domains: tuple[str, ...]
