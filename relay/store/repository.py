"""
The store's operations: what the admin CLI (and later the management API)
changes, and the snapshot the relay loads.

Every method is one transaction and returns plain values.  Every change of
configuration also increments the store generation in its transaction; the
relay polls L{Store.generation} to know when to reload L{Store.loadSnapshot}.
Usage (L{Store.recordUsage}) is not configuration and leaves it alone.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from relay.auth import passwords
from relay.core import tenant as tenants
from relay.core.tenant import Rate
from relay.core.urls import UpstreamURL
from relay.store import inputs, networkrules
from relay.store.database import snapshotEngine
from relay.store.errors import Conflict, Invalid, NotFound, UndecryptableSecret
from relay.store.models import (
    ACTIVE,
    OPERATOR,
    SECRET_COLUMNS,
    TENANT,
    Account,
    AccountToken,
    Base,
    BlockedDomain,
    ClientNetwork,
    Login,
    Plan,
    SenderDomain,
    StoreGeneration,
    Tenant,
    UpstreamRecord,
    Usage,
    WebSession,
)
from relay.store.secrets import KeyRing
from relay.store.usage import addUsage, readUsage
from relay.store.values import (
    DomainChallenge,
    NetworkInfo,
    OAuthSettings,
    PlanInfo,
    SecretRotation,
    TenantDetails,
    TenantExport,
    TenantInfo,
    UpstreamInfo,
    UsageDelta,
    UsageRow,
)
from relay.store.views import details, planInfo, relayTenant, relayUpstream, tenantInfo, upstreamInfo

__all__ = ["Store"]

# The password of a URL quoted in an error message: "//user:secret@".
_QUOTED_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def _withoutPassword(message: str) -> str:
    """An error message about a URL, with any password in it replaced by C{***}."""
    return _QUOTED_PASSWORD.sub(r"\1***@", message)


def _rateColumns(prefix: str, rate: Rate | None) -> dict[str, object]:
    """The count and period columns of a rate (C{None}: neither set)."""
    if rate is None:
        return {f"{prefix}_count": None, f"{prefix}_seconds": None}
    return {f"{prefix}_count": rate.count, f"{prefix}_seconds": rate.seconds}


def _allowBounces(value: object) -> dict[str, object]:
    if not isinstance(value, bool):
        raise Invalid(f"invalid bounce setting {value!r}: expected yes or no")
    return {"allow_bounces": value}


# What Store.setTenant changes: the columns each keyword sets, from its checked value.
_SETTINGS: dict[str, Callable[[Any], dict[str, object]]] = {
    "email": lambda value: {"email": inputs.emailAddress(value)},
    "company": lambda value: {"company": inputs.company(value)},
    "orgId": lambda value: {"org_id": inputs.orgId(value)},
    "status": lambda value: {"status": inputs.status(value)},
    "maxSize": lambda value: {"max_size": inputs.limit(value, "maximum message size", inputs.MAX_BIG_INTEGER)},
    "maxRecipients": lambda value: {"max_recipients": inputs.limit(value, "maximum recipients")},
    "rate": lambda value: _rateColumns("rate", inputs.rate(value, "rate")),
    "rateRecipients": lambda value: _rateColumns("rate_recipients", inputs.rate(value, "recipient rate")),
    "maxConcurrency": lambda value: {"max_concurrency": inputs.limit(value, "maximum concurrency")},
    "allowBounces": _allowBounces,
    "plan": lambda value: {"plan": value, "trial_ends_at": None, "trial_messages": None},  # checked in setTenant
    "activityRetentionDays": lambda value: {
        "activity_retention_days": inputs.limit(value, "activity retention days", 3660)
    },
}
_PLAN_LIMITS = ("maxSize", "maxRecipients", "rate", "rateRecipients", "maxConcurrency")


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

    @property
    def engine(self) -> Engine:
        """The database, for the stores beside this one (accounts, activity)."""
        return self._engine

    @contextmanager
    def _changing(self, bump: bool = True) -> Iterator[Session]:
        """
        A transaction that changes the store.  It first increments the
        generation, which locks that row until commit: changes are
        serialised, so a check made inside one still holds at its commit.

        @param bump: C{False} for a change the relay's snapshot does not
            show (or not always): it takes the lock all the same, and may
            L{bumpGeneration} later.
        """
        with Session(self._engine) as session, session.begin():
            bumpGeneration(session, int(bump))
            yield session

    # Tenants

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
            return tenantInfo(tenant)

    def setTenant(self, name: str, **changes: Any) -> TenantDetails:
        """
        Change a tenant's fields and settings; the others stay as they are.

        @param changes: any of C{email}, C{company}, C{orgId} (C{None}
            clears it), C{status} (C{"active"} or C{"suspended"}), the
            limits C{maxSize}, C{maxRecipients}, C{maxConcurrency} (a
            positive C{int}, or C{None} to clear it), the rates C{rate},
            C{rateRecipients} (a L{Rate} of at least 1, or C{None}), and
            C{allowBounces} (C{bool}).
        @return: the tenant as changed.
        @raise TypeError: an unknown keyword.
        @raise Invalid: no change, or a bad value.
        @raise NotFound: there is no such tenant.
        """
        unknown = set(changes) - set(_SETTINGS)
        if unknown:
            raise TypeError(f"unknown tenant settings: {', '.join(sorted(unknown))}")
        if not changes:
            raise Invalid("nothing to change")
        columns = {column: value for key, item in changes.items() for column, value in _SETTINGS[key](item).items()}
        with self._changing() as session:
            tenant = _findTenant(session, name)
            plan = changes.get("plan")
            if plan is not None and session.scalar(select(Plan.id).where(Plan.name == plan)) is None:
                raise NotFound(f"unknown plan {plan!r}")
            for column, value in columns.items():
                setattr(tenant, column, value)
            session.flush()
            return details(tenant)

    # Plans and trials

    def addPlan(self, name: str, **limits: Any) -> PlanInfo:
        """
        A named set of limits (C{maxSize}, C{maxRecipients}, C{rate},
        C{rateRecipients}, C{maxConcurrency}).

        @raise Conflict: a plan has that name.
        @raise Invalid: a bad name or limit.
        """
        plan = Plan(name=inputs.tenantName(name), **self._planColumns(limits))
        with self._changing() as session:
            if session.scalar(select(Plan.id).where(Plan.name == plan.name)) is not None:
                raise Conflict(f"plan {plan.name!r} already exists")
            session.add(plan)
            session.flush()
            return planInfo(plan)

    def setPlan(self, name: str, **limits: Any) -> PlanInfo:
        """Change a plan's limits (C{None} clears one); its tenants have them at once.  @raise NotFound."""
        if not limits:
            raise Invalid("nothing to change")
        columns = self._planColumns(limits)
        with self._changing() as session:
            plan = session.scalars(select(Plan).where(Plan.name == name)).first()
            if plan is None:
                raise NotFound(f"unknown plan {name!r}")
            for column, value in columns.items():
                setattr(plan, column, value)
            session.flush()
            return planInfo(plan)

    def _planColumns(self, limits: dict[str, Any]) -> dict[str, object]:
        unknown = set(limits) - set(_PLAN_LIMITS)
        if unknown:
            raise TypeError(f"unknown plan limits: {', '.join(sorted(unknown))}")
        return {column: value for key, item in limits.items() for column, value in _SETTINGS[key](item).items()}

    def listPlans(self) -> list[PlanInfo]:
        with Session(self._engine) as session, session.begin():
            return [planInfo(plan) for plan in session.scalars(select(Plan).order_by(Plan.name))]

    def endTrials(self, now: datetime | None = None) -> list[str]:
        """
        End the trials whose messages are used up (their end set to now; the
        relay then refuses their mail); the tenants whose trial ended.
        """
        now = now or datetime.now(UTC)
        with self._changing(bump=False) as session:
            used = (
                select(Usage.tenant_id, func.sum(Usage.messages_relayed).label("relayed"))
                .group_by(Usage.tenant_id)
                .subquery()
            )
            rows = session.scalars(
                select(Tenant)
                .join(used, used.c.tenant_id == Tenant.id)
                .where(Tenant.trial_ends_at > now, Tenant.trial_messages.is_not(None))
                .where(used.c.relayed >= Tenant.trial_messages)
            )
            ended = []
            for tenant in rows:
                tenant.trial_ends_at = now
                ended.append(tenant.name)
            if ended:
                bumpGeneration(session)
            return ended

    def listTenants(self) -> list[TenantInfo]:
        """Every tenant, by name."""
        with Session(self._engine) as session, session.begin():
            return [tenantInfo(tenant) for tenant in session.scalars(select(Tenant).order_by(Tenant.name))]

    def showTenant(self, name: str) -> TenantDetails:
        """
        A tenant with its settings, logins, upstreams (passwords redacted),
        domains, networks and blocklist.

        @raise NotFound: there is no such tenant.
        """
        with Session(self._snapshotEngine) as session, session.begin():
            return details(_findTenant(session, name))

    def exportTenant(self, name: str) -> TenantExport:
        """
        Everything stored about a tenant, as of one moment: its details and
        its usage.  Password hashes and upstream passwords are left out.

        @raise NotFound: there is no such tenant.
        """
        with Session(self._snapshotEngine) as session, session.begin():
            tenant = _findTenant(session, name)
            return TenantExport(tenant=details(tenant), usage=tuple(readUsage(session, tenant.id, None)))

    def deleteTenant(self, name: str) -> dict[str, int]:
        """
        Delete a tenant and every row about it, usage included: nothing
        about it remains.

        @return: how many rows were deleted from each table but C{tenants}.
        @raise NotFound: there is no such tenant.
        """
        with self._changing() as session:
            tenantId = _findTenant(session, name).id
            accounts = select(Account.id).where(Account.tenant_id == tenantId).scalar_subquery()
            deleted = {
                table.__tablename__: rowcount(session.execute(delete(table).where(table.account_id.in_(accounts))))
                for table in (WebSession, AccountToken)
            }
            deleted |= {
                table.name: rowcount(session.execute(delete(table).where(table.c.tenant_id == tenantId)))
                for table in reversed(Base.metadata.sorted_tables)
                if "tenant_id" in table.c
            }
            session.execute(delete(Tenant).where(Tenant.id == tenantId))
        return deleted

    # Logins

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

    def removeLogin(self, tenant: str, username: str) -> None:
        """
        Take SMTP credentials away from a tenant.

        @raise NotFound: there is no such tenant, or it has no such login.
        """
        self._remove(tenant, Login.username, username, "login")

    def upgradePasswordHash(self, username: str, oldHash: str, newHash: str) -> bool:
        """
        Replace a login's password hash by one of the current parameters
        (L{passwords.needsRehash}), after a successful login verified the
        password against C{oldHash}: only if the stored hash is still
        C{oldHash}, so a password changed meanwhile is not undone.

        @return: whether the hash was replaced (the generation is then
            incremented).
        @raise Invalid: C{newHash} is not a hash of the current parameters.
        """
        if passwords.needsRehash(newHash):
            raise Invalid("the new password hash is not a hash of the current parameters")
        with self._changing(bump=False) as session:
            replaced = rowcount(
                session.execute(
                    update(Login)
                    .where(Login.username == username, Login.password_hash == oldHash)
                    .values(password_hash=newHash)
                )
            )
            if replaced:
                bumpGeneration(session)
        return bool(replaced)

    # Upstreams

    def addUpstream(
        self,
        tenant: str,
        url: str,
        priority: int = 10,
        *,
        validate: Callable[[UpstreamURL], object],
        oauth: OAuthSettings | None = None,
        clientCertificate: tuple[bytes, bytes] | None = None,
        byTenant: bool = False,
    ) -> UpstreamInfo:
        """
        Add an upstream to a tenant.  The URL is kept without its password;
        the password, the OAuth client's secret and refresh token and the
        client certificate's key are encrypted with the key ring.

        @param validate: checks the parsed URL (for the upstream type of its
            scheme), raising C{ValueError} with the reason when it is not
            usable.
        @param oauth: its OAuth 2.0 client (the URL says C{?auth=xoauth2}).
        @param clientCertificate: a PEM chain and its PEM key, presented in
            the upstream's TLS handshake.
        @param byTenant: the tenant entered it (the portal, a tenant's API
            token): the relay restricts where it may lead.
        @return: the upstream, secrets redacted.
        @raise NotFound: there is no such tenant.
        @raise Invalid: the URL is malformed or refused by C{validate}, the
            priority is out of range, the OAuth client or the certificate is
            unusable.
        """
        try:
            parsed = UpstreamURL.parse(url)
            validate(parsed)
        except ValueError as e:
            raise Invalid(_withoutPassword(str(e))) from None
        priority = inputs.priority(priority)
        oauth = inputs.oauthSettings(parsed, oauth)
        encrypt = self._encrypt
        columns: dict[str, Any] = {}
        if oauth is not None:
            columns.update(
                oauth_token_url=oauth.tokenUrl,
                oauth_client_id=oauth.clientId.strip(),
                oauth_scope=oauth.scope,
                oauth_provider=oauth.provider,
                oauth_client_secret=encrypt(oauth.clientSecret),
                oauth_refresh_token=encrypt(oauth.refreshToken),
            )
        if clientCertificate is not None:
            chain, key = inputs.clientCertificate(*clientCertificate)
            columns.update(client_cert=chain.decode("ascii"), client_key=encrypt(key.decode("ascii")))
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            record = UpstreamRecord(
                tenant=owner,
                url=parsed.withoutPassword().unparse(),
                secret=encrypt(parsed.password),
                priority=priority,
                origin=TENANT if byTenant else OPERATOR,
                **columns,
            )
            session.add(record)
            session.flush()
            return upstreamInfo(record)

    def _encrypt(self, text: str | None) -> str | None:
        return None if text is None else self._keyRing.encrypt(text)

    def findUpstream(self, tenant: str, upstream: str) -> tuple[UpstreamInfo, tenants.Upstream]:
        """
        One of a tenant's upstreams, as operators see it and as the relay
        uses it (secrets decrypted: for C{upstream test} and consent only).

        @param upstream: its id (C{3} or C{#3}) or URL, as L{removeUpstream} takes.
        @raise NotFound: no such tenant or upstream.
        @raise Invalid: a selector several upstreams match.
        """
        with Session(self._engine) as session, session.begin():
            record = _selectUpstream(_findTenant(session, tenant), tenant, upstream)
            try:
                return upstreamInfo(record), relayUpstream(record, self._keyRing)
            except ValueError as e:
                raise Invalid(f"upstream #{record.id} cannot be read: {e}") from None

    def setRefreshToken(self, upstreamId: int, refreshToken: str) -> None:
        """
        Give an OAuth upstream the refresh token of a new consent (the
        relay reloads it).

        @raise NotFound: no such upstream, or it has no OAuth client.
        """
        with self._changing() as session:
            record = session.get(UpstreamRecord, upstreamId)
            if record is None or record.oauth_token_url is None:
                raise NotFound(f"no OAuth upstream #{upstreamId}")
            record.oauth_refresh_token = self._keyRing.encrypt(refreshToken)

    def loadRefreshToken(self, upstreamId: int) -> str | None:
        """The refresh token stored for an upstream now (another process may have rotated it)."""
        with Session(self._engine) as session, session.begin():
            stored = session.scalars(
                select(UpstreamRecord.oauth_refresh_token).where(UpstreamRecord.id == upstreamId)
            ).one_or_none()
        return None if stored is None else self._keyRing.decrypt(stored)

    def rotateRefreshToken(self, upstreamId: int, old: str, new: str) -> bool:
        """
        Store a refresh token the provider rotated, if the one stored is
        still C{old} (another process may have rotated it first): C{True}
        when stored.  The generation is left alone: the relay that rotated
        it holds the new one already.
        """
        with self._changing(bump=False) as session:
            record = session.get(UpstreamRecord, upstreamId, with_for_update=True)
            if record is None or record.oauth_refresh_token is None:
                return False
            if self._keyRing.decrypt(record.oauth_refresh_token) != old:
                return False
            record.oauth_refresh_token = self._keyRing.encrypt(new)
            return True

    def removeUpstream(self, tenant: str, upstream: str) -> UpstreamInfo:
        """
        Remove an upstream from a tenant.

        @param upstream: its id (as L{showTenant} gives it, C{3} or C{#3}),
            or its URL, with its password, C{***} for it, or none.
        @return: the upstream removed, password redacted.
        @raise NotFound: there is no such tenant, or it has no such upstream.
        @raise Invalid: a malformed URL, or one that several upstreams of
            the tenant have (give the id).
        """
        with self._changing() as session:
            record = _selectUpstream(_findTenant(session, tenant), tenant, upstream, "remove one")
            session.delete(record)
            return upstreamInfo(record)

    def reencryptSecrets(self) -> SecretRotation:
        """
        Encrypt every stored upstream secret (passwords, OAuth client
        secrets and refresh tokens, client certificate keys) again with the
        primary key (after L{relay.store.secrets.rotate}), in one
        transaction.  The generation is left alone: the secrets, as the
        relay sees them, do not change.
        """
        reencrypted, undecryptable = 0, []
        with self._changing(bump=False) as session:
            for record in session.scalars(select(UpstreamRecord)):
                try:
                    again = {
                        column: self._keyRing.reencrypt(getattr(record, column))
                        for column in SECRET_COLUMNS
                        if getattr(record, column) is not None
                    }
                except UndecryptableSecret:
                    undecryptable.append(record.id)
                    continue
                for column, token in again.items():
                    setattr(record, column, token)
                reencrypted += len(again)
        return SecretRotation(reencrypted=reencrypted, undecryptable=tuple(undecryptable))

    # Sender domains and the blocklist

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
        return self._addDomain(tenant, SenderDomain, inputs.senderDomain(domain), "allowed")

    def claimDomain(self, tenant: str, domain: str) -> DomainChallenge:
        """
        A tenant asks to send from a domain: it counts once a DNS TXT record
        proves it theirs (L{domainVerified}).  A domain another tenant
        proved is not theirs to claim (an operator can add it).

        @raise Conflict: the tenant has it already, or another tenant proved it.
        """
        domain = inputs.senderDomain(domain)
        token = secrets.token_urlsafe(24)
        with self._changing(bump=False) as session:
            owner = _findTenant(session, tenant)
            bare = domain.removeprefix("*.")
            taken = session.scalars(
                select(Tenant.name)
                .join(SenderDomain)
                .where(SenderDomain.domain.in_([bare, f"*.{bare}"]), SenderDomain.verified_at.is_not(None))
                .where(Tenant.id != owner.id)
            ).first()
            if taken is not None:
                raise Conflict(f"domain {domain!r} is in use by another tenant; ask the operator")
            mine = select(SenderDomain.id).where(SenderDomain.tenant_id == owner.id, SenderDomain.domain == domain)
            if session.scalar(mine):
                raise Conflict(f"domain {domain!r} already allowed for tenant {tenant!r}")
            session.add(SenderDomain(tenant_id=owner.id, domain=domain, verify_token=token, verified_at=None))
        return _challenge(domain, token, False)

    def domainChallenges(self, tenant: str) -> list[DomainChallenge]:
        """The tenant's domains with the TXT record that proves each (operators' have none: shown verified)."""
        with Session(self._engine) as session, session.begin():
            owner = _findTenant(session, tenant)
            return [_challenge(d.domain, d.verify_token or "", d.verified_at is not None) for d in owner.domains]

    def domainVerified(self, tenant: str, domain: str) -> None:
        """The TXT record was found: the domain counts now.  @raise NotFound."""
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            record = session.scalars(
                select(SenderDomain).where(SenderDomain.tenant_id == owner.id, SenderDomain.domain == domain)
            ).first()
            if record is None:
                raise NotFound(f"tenant {tenant!r} has no domain {domain!r}")
            record.verified_at = record.verified_at or datetime.now(UTC)

    def removeDomain(self, tenant: str, domain: str) -> str:
        """
        No longer allow a tenant to send from a domain.

        @return: the domain as it was kept.
        @raise NotFound: there is no such tenant, or it has not that domain.
        @raise Invalid: it is not a sender domain.
        """
        return self._remove(tenant, SenderDomain.domain, inputs.senderDomain(domain), "sender domain")

    def addBlockedDomain(self, tenant: str, domain: str) -> str:
        """
        Refuse a tenant's messages whose content has a URL of a domain or of
        any of its subdomains.

        @return: the domain as kept, lower case.
        @raise NotFound: there is no such tenant.
        @raise Invalid: it is not a domain name.
        @raise Conflict: the tenant already blocks it.
        """
        return self._addDomain(tenant, BlockedDomain, inputs.blockedDomain(domain), "blocked")

    def removeBlockedDomain(self, tenant: str, domain: str) -> str:
        """
        Take a domain off a tenant's blocklist.

        @return: the domain as it was kept.
        @raise NotFound: there is no such tenant, or it does not block it.
        @raise Invalid: it is not a domain name.
        """
        return self._remove(tenant, BlockedDomain.domain, inputs.blockedDomain(domain), "blocked domain")

    def _addDomain(self, tenant: str, model: type[SenderDomain | BlockedDomain], domain: str, listed: str) -> str:
        """Add a checked domain to a tenant's domains of one kind, unless it is there."""
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            if session.scalar(select(model.id).where(model.tenant_id == owner.id, model.domain == domain)):
                raise Conflict(f"domain {domain!r} already {listed} for tenant {tenant!r}")
            extra = {"verified_at": datetime.now(UTC)} if model is SenderDomain else {}
            session.add(model(tenant_id=owner.id, domain=domain, **extra))
        return domain

    # Client networks

    def addNetwork(self, tenant: str, network: str, noAuth: bool = False) -> NetworkInfo:
        """
        Add a client network to a tenant, under the rules of
        L{relay.store.networkrules}.  The check sees every other network as of
        its commit: changes are serialised.

        @param network: CIDR without host bits, such as C{192.0.2.0/24}.
        @param noAuth: its clients act as the tenant without AUTH.
        @raise NotFound: there is no such tenant.
        @raise Invalid: a malformed network, or a no-auth one too wide.
        @raise Conflict: the tenant has it, or it overlaps another tenant's
            network where either is no-auth.
        """
        parsed = inputs.network(network)
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            stored = session.execute(select(Tenant.name, ClientNetwork.network, ClientNetwork.no_auth).join(Tenant))
            networkrules.checkNetwork(
                owner.name, parsed, noAuth, ((name, ipaddress.ip_network(text), flag) for name, text, flag in stored)
            )
            session.add(ClientNetwork(tenant_id=owner.id, network=str(parsed), no_auth=noAuth))
        return NetworkInfo(network=str(parsed), noAuth=noAuth)

    def removeNetwork(self, tenant: str, network: str) -> str:
        """
        Remove a client network from a tenant.

        @return: the network as it was kept.
        @raise NotFound: there is no such tenant, or it has no such network.
        @raise Invalid: a malformed network.
        """
        return self._remove(tenant, ClientNetwork.network, str(inputs.network(network)), "network")

    def _remove(self, tenant: str, column, value: str, what: str) -> str:
        """
        Delete a tenant's row whose C{column} has C{value}.

        @return: C{value}.
        @raise NotFound: there is no such tenant, or no such row.
        """
        model = column.class_
        with self._changing() as session:
            owner = _findTenant(session, tenant)
            if not rowcount(session.execute(delete(model).where(model.tenant_id == owner.id, column == value))):
                raise NotFound(f"tenant {tenant!r} has no {what} {value!r}")
        return value

    # Usage

    def recordUsage(self, rows: Iterable[UsageDelta]) -> None:
        """
        Add usage to the daily totals, in one transaction, whatever other
        instances add at the same time.  Deltas of unknown tenants (deleted
        since) are skipped.  The generation is left alone.

        @raise Invalid: a negative count (nothing is recorded).
        """
        with self._engine.begin() as connection:
            addUsage(connection, rows)

    def usage(self, tenant: str | None = None, since: date | None = None) -> list[UsageRow]:
        """
        The daily totals, by tenant name and day.

        @param tenant: only this tenant's.
        @param since: only from this day on.
        @raise NotFound: there is no such tenant.
        """
        with Session(self._snapshotEngine) as session, session.begin():
            tenantId = None if tenant is None else _findTenant(session, tenant).id
            return readUsage(session, tenantId, since)

    # The relay's view

    def generation(self) -> int:
        """The store generation: it increases with every change of configuration."""
        with Session(self._engine) as session, session.begin():
            return session.scalars(select(StoreGeneration.value)).one()

    def loadSnapshot(self) -> tenants.Snapshot:
        """
        Everything the relay needs, as of one generation: all read in one
        transaction, so the data is exactly that of the generation.

        Upstream passwords are decrypted.  What cannot be read is left out
        and said in L{relay.core.tenant.Snapshot.problems} (see
        L{relay.store.views.relayTenant}): one tenant's damaged row does not
        stop the relay from loading the others.
        """
        problems: list[str] = []
        with Session(self._snapshotEngine) as session, session.begin():
            generation = session.scalars(select(StoreGeneration.value)).one()
            rows = session.scalars(
                select(Tenant).options(
                    selectinload(Tenant.upstreams),
                    selectinload(Tenant.domains),
                    selectinload(Tenant.networks),
                    selectinload(Tenant.blocklist),
                )
            )
            plans = {plan.name: plan for plan in session.scalars(select(Plan))}
            loaded = {row.name: relayTenant(row, self._keyRing, problems, plans) for row in rows}
            logins = {
                username: tenants.Login(username=username, tenant=owner, passwordHash=passwordHash)
                for username, owner, passwordHash in session.execute(
                    select(Login.username, Tenant.name, Login.password_hash).join(Tenant)
                )
            }
        return tenants.Snapshot(generation=generation, tenants=loaded, logins=logins, problems=tuple(problems))


def _challenge(domain: str, token: str, verified: bool) -> DomainChallenge:
    bare = domain.removeprefix("*.")
    return DomainChallenge(
        domain=domain, name=f"_smtprelay-challenge.{bare}", value=f"smtprelay-verify={token}", verified=verified
    )


def _selectUpstream(owner: Tenant, tenant: str, upstream: str, purpose: str = "choose one") -> UpstreamRecord:
    """The one upstream of C{owner} that C{upstream} (an id or a URL) names; C{purpose} for the ambiguity's message."""
    shown, matches = _upstreamSelector(upstream)
    found = [record for record in owner.upstreams if matches(record)]
    if not found:
        raise NotFound(f"tenant {tenant!r} has no upstream {shown}")
    if len(found) > 1:
        ids = ", ".join(str(record.id) for record in found)
        raise Invalid(f"upstreams {ids} of tenant {tenant!r} are {shown}: give the id to {purpose}")
    return found[0]


def _upstreamSelector(upstream: str) -> tuple[str, Callable[[UpstreamRecord], bool]]:
    """
    How to show, and how to find, the upstream an operator names: by id
    (C{3} or C{#3}), or by URL whatever its password.

    @raise Invalid: a malformed URL.
    """
    number = upstream.removeprefix("#")
    if number.isdigit():
        return f"#{number}", lambda record: record.id == int(number)
    try:
        parsed = UpstreamURL.parse(upstream)
    except ValueError as e:
        raise Invalid(_withoutPassword(str(e))) from None
    stored = parsed.withoutPassword().unparse()
    return parsed.redacted(), lambda record: record.url == stored


def rowcount(result: Result[Any]) -> int:
    """How many rows a DML statement touched (its result is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


def bumpGeneration(session: Session, by: int = 1) -> None:
    """Add to the store generation (0: nothing), locking its row until the transaction ends."""
    session.execute(update(StoreGeneration).where(StoreGeneration.id == 1).values(value=StoreGeneration.value + by))


def _findTenant(session: Session, name: str) -> Tenant:
    """
    @raise NotFound: there is no such tenant.
    """
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"unknown tenant {name!r}")
    return tenant
