"""
The store's operations: what the admin CLI (and later the management API)
changes, and the snapshot the relay loads.

Every method is one transaction and returns plain values.  Every change also
increments the store generation in its transaction; the relay polls
L{Store.generation} to know when to reload L{Store.loadSnapshot}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, selectinload

from relay import passwords, tenants
from relay.store import inputs
from relay.store.database import snapshotEngine
from relay.store.errors import Conflict, Invalid, NotFound, UndecryptableSecret
from relay.store.models import ACTIVE, Login, SenderDomain, StoreGeneration, Tenant, UpstreamRecord
from relay.store.secrets import KeyRing
from relay.store.values import TenantDetails, TenantInfo, UpstreamInfo
from relay.urls import UpstreamURL

__all__ = ["Store"]

# The password of a URL quoted in an error message: "//user:secret@".
_QUOTED_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def _withoutPassword(message: str) -> str:
    """An error message about a URL, with any password in it replaced by C{***}."""
    return _QUOTED_PASSWORD.sub(r"\1***@", message)


class Store:
    """
    The tenant store.

    @param engine: from L{relay.store.database.openEngine}, with a current
        schema (L{relay.store.database.requireCurrentSchema}).
    @param keyRing: encrypts and decrypts upstream passwords.
    """

    def __init__(self, engine: Engine, keyRing: KeyRing):
        self._engine = engine
        self._snapshotEngine = snapshotEngine(engine)
        self._keyRing = keyRing

    @contextmanager
    def _changing(self) -> Iterator[Session]:
        """
        A transaction that changes the store.  It first increments the
        generation, which locks that row until commit: changes are
        serialised, so a check made inside one still holds at its commit.
        """
        with Session(self._engine) as session, session.begin():
            session.execute(
                update(StoreGeneration).where(StoreGeneration.id == 1).values(value=StoreGeneration.value + 1)
            )
            yield session

    def addTenant(self, name: str, email: str, company: str, orgId: str | None = None) -> TenantInfo:
        """
        Add an active tenant.

        @param orgId: a 15- or 18-character Salesforce org id (kept in its
            18-character form) or C{None}.
        @return: the tenant as stored.
        @raise Invalid: a malformed name, e-mail address, company or org id.
        @raise Conflict: a tenant has that name.
        """
        tenant = Tenant(
            name=inputs.tenantName(name),
            email=inputs.emailAddress(email),
            company=inputs.company(company),
            org_id=inputs.orgId(orgId),
            status=ACTIVE,
        )
        with self._changing() as session:
            if session.scalar(select(Tenant.id).where(Tenant.name == tenant.name)) is not None:
                raise Conflict(f"tenant {tenant.name!r} already exists")
            session.add(tenant)
            session.flush()
            return _tenantInfo(tenant)

    def listTenants(self) -> list[TenantInfo]:
        """Every tenant, by name."""
        with Session(self._engine) as session, session.begin():
            return [_tenantInfo(tenant) for tenant in session.scalars(select(Tenant).order_by(Tenant.name))]

    def showTenant(self, name: str) -> TenantDetails:
        """
        A tenant with its logins, upstreams (passwords redacted) and domains.

        @raise NotFound: there is no such tenant.
        """
        with Session(self._snapshotEngine) as session, session.begin():
            tenant = _findTenant(session, name)
            return TenantDetails(
                **_tenantFields(tenant),
                logins=tuple(login.username for login in tenant.logins),
                upstreams=tuple(
                    UpstreamInfo(url=_shownURL(record), priority=record.priority) for record in tenant.upstreams
                ),
                domains=tuple(domain.domain for domain in tenant.domains),
            )

    def addLogin(self, tenant: str, username: str, password: str) -> None:
        """
        Give a tenant SMTP credentials.  The password is kept as a scrypt
        hash, computed before the transaction starts (it takes about 0.1 s).

        @raise NotFound: there is no such tenant.
        @raise Invalid: a malformed user name or an empty password.
        @raise Conflict: the user name is taken (by any tenant).
        """
        username = inputs.username(username)
        passwordHash = passwords.hashPassword(inputs.password(password))
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            taken = session.scalar(select(Tenant.name).join(Login).where(Login.username == username))
            if taken is not None:
                raise Conflict(f"login {username!r} already exists (tenant {taken!r})")
            session.add(Login(tenant=owner, username=username, password_hash=passwordHash))

    def addUpstream(
        self, tenant: str, url: str, priority: int = 10, *, validate: Callable[[UpstreamURL], object]
    ) -> UpstreamInfo:
        """
        Add an upstream to a tenant.  The URL is kept without its password;
        the password is encrypted with the key ring.

        @param validate: checks the parsed URL (for the upstream type of its
            scheme), raising C{ValueError} with the reason when it is not
            usable.
        @return: the upstream, password redacted.
        @raise NotFound: there is no such tenant.
        @raise Invalid: the URL is malformed or refused by C{validate}, or the
            priority is out of range.
        """
        try:
            parsed = UpstreamURL.parse(url)
            validate(parsed)
        except ValueError as e:
            raise Invalid(_withoutPassword(str(e))) from None
        priority = inputs.priority(priority)
        secret = None if parsed.password is None else self._keyRing.encrypt(parsed.password)
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            session.add(
                UpstreamRecord(tenant=owner, url=parsed.withoutPassword().unparse(), secret=secret, priority=priority)
            )
        return UpstreamInfo(url=parsed.redacted(), priority=priority)

    def addDomain(self, tenant: str, domain: str) -> str:
        """
        Allow a tenant to send from a domain.

        @param domain: C{example.com} (exactly that domain) or C{*.example.com}
            (its subdomains).
        @return: the domain as kept, lower case.
        @raise NotFound: there is no such tenant.
        @raise Invalid: it is not a domain name (or C{*.} and one).
        @raise Conflict: the tenant already has it.
        """
        domain = inputs.senderDomain(domain)
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            if domain in {row.domain for row in owner.domains}:
                raise Conflict(f"domain {domain!r} already allowed for tenant {tenant!r}")
            session.add(SenderDomain(tenant=owner, domain=domain))
        return domain

    def generation(self) -> int:
        """The store generation: it increases with every change."""
        with Session(self._engine) as session, session.begin():
            return session.scalar(select(StoreGeneration.value))

    def loadSnapshot(self) -> tenants.Snapshot:
        """
        Everything the relay needs, as of one generation: all read in one
        transaction, so the data is exactly that of the generation.

        Upstream passwords are decrypted.  An upstream whose URL cannot be
        parsed or whose password cannot be decrypted is left out, and said
        in L{relay.tenants.Snapshot.problems}: one tenant's damaged row does
        not stop the relay from loading the others.
        """
        problems: list[str] = []
        with Session(self._snapshotEngine) as session, session.begin():
            generation = session.scalar(select(StoreGeneration.value))
            rows = session.scalars(
                select(Tenant).options(selectinload(Tenant.upstreams), selectinload(Tenant.domains))
            )
            loaded = {
                row.name: tenants.Tenant(
                    name=row.name,
                    active=row.status == ACTIVE,
                    orgId=row.org_id,
                    upstreams=tuple(self._upstreams(row, problems)),
                    domains=frozenset(domain.domain for domain in row.domains),
                )
                for row in rows
            }
            logins = {
                username: tenants.Login(username=username, tenant=owner, passwordHash=passwordHash)
                for username, owner, passwordHash in session.execute(
                    select(Login.username, Tenant.name, Login.password_hash).join(Tenant)
                )
            }
        return tenants.Snapshot(generation=generation, tenants=loaded, logins=logins, problems=tuple(problems))

    def _upstreams(self, tenant: Tenant, problems: list[str]) -> Iterator[tenants.Upstream]:
        """A tenant's usable upstreams, in priority order; the others go to C{problems}."""
        for record in tenant.upstreams:
            try:
                url = UpstreamURL.parse(record.url)
                password = None if record.secret is None else self._keyRing.decrypt(record.secret)
            except (ValueError, UndecryptableSecret) as e:
                problems.append(f"tenant {tenant.name!r}: upstream {record.id} left out: {e}")
                continue
            yield tenants.Upstream(url=url.withPassword(password), priority=record.priority)


def _findTenant(session: Session, name: str) -> Tenant:
    """
    @raise NotFound: there is no such tenant.
    """
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"unknown tenant {name!r}")
    return tenant


def _tenantFields(tenant: Tenant) -> dict[str, object]:
    return {
        "name": tenant.name,
        "email": tenant.email,
        "company": tenant.company,
        "orgId": tenant.org_id,
        "status": tenant.status,
        "createdAt": tenant.created_at,
    }


def _tenantInfo(tenant: Tenant) -> TenantInfo:
    return TenantInfo(**_tenantFields(tenant))


def _shownURL(record: UpstreamRecord) -> str:
    """An upstream's URL as operators see it: C{***} where its password is."""
    if record.secret is None:
        return record.url
    return UpstreamURL.parse(record.url).withPassword("").redacted()
