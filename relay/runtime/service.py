"""
The relay as a Twisted service: everything one process runs, built from the
command-line options.
"""

from __future__ import annotations

import signal

from sqlalchemy import make_url
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from relay.auth.chain import FirstOf
from relay.auth.logins import TenantChecker
from relay.core.reply import Reply
from relay.core.tenant import Snapshot
from relay.core.tls import serverTLSOptions
from relay.policy.chain import NamedPolicy, PolicyChain
from relay.runtime.directory import Directory
from relay.runtime.endpoints import AdoptedEndpoint
from relay.runtime.proxy import PREFIX as PROXY_PREFIX
from relay.runtime.proxy import ProxiedEndpoint
from relay.runtime.sharedstate import RedisConnection
from relay.seams.discovery import Discovery, discover, origin
from relay.seams.interfaces import IPolicy
from relay.seams.policy import PolicyContext
from relay.seams.registration import PluginError, conformance
from relay.seams.upstream import UpstreamContext
from relay.server.context import ServerContext
from relay.server.guard import ConnectionGuard, MemoryAuthFailures, RedisAuthFailures
from relay.server.protocol import SMTPServerFactory
from relay.store.activity import ActivityLog
from relay.store.database import openEngine, requireCurrentSchema
from relay.store.errors import StoreError
from relay.store.repository import Store
from relay.store.secrets import KeyRing
from relay.telemetry.accounting import UsageRecorder
from relay.telemetry.activity import ActivityRecorder
from relay.telemetry.logs import useLogFormat
from relay.telemetry.metrics import Metrics
from relay.telemetry.monitoring import metricsSite
from relay.telemetry.report import AddressRedactor, Reporter
from relay.upstreams.oauth import AccessTokens, StoredRefreshTokens
from relay.upstreams.pool import UpstreamPool

__all__ = ["RelayService", "StartupError"]


def stopOnTerminate(reactor) -> None:
    """
    Make SIGTERM stop the reactor, which drains (see the services'
    C{stopService}); the process then exits 0, not by re-raising the signal
    as twistd would.  Installed once the reactor runs, after its own handlers.
    """

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def terminate(signum, frame) -> None:
        reactor.callFromThread(stop)

    reactor.callWhenRunning(signal.signal, signal.SIGTERM, terminate)


class StartupError(Exception):
    """The relay cannot start as configured; the message says why, in one line."""


def _openStore(options) -> tuple[Store, KeyRing]:
    """The tenant store, checked before anything starts (errors end twistd with a reason)."""
    try:
        engine = openEngine(options["database"])
        requireCurrentSchema(engine)
        keyRing = KeyRing.fromFile(options["secret-key-file"])
        return Store(engine, keyRing), keyRing
    except (StoreError, OSError, ValueError) as e:
        raise StartupError(str(e)) from None
    except Exception as e:  # a driver error: unreachable database, bad URL, ...
        shown = make_url(options["database"]).render_as_string(hide_password=True)
        raise StartupError(f"cannot open the tenant store {shown}: {e}") from None


def _serverTLS(options):
    try:
        if options["tls-cert"]:
            return serverTLSOptions(options["tls-cert"], options["tls-key"], options["tls-profile"])
        return None
    except (OSError, ValueError) as e:
        raise StartupError(str(e)) from None


def checkConfiguration(options) -> None:
    """What a relay would refuse to start with (store, TLS files), checked in this process."""
    _openStore(options)
    _serverTLS(options)


def _policies(options, reactor, discovery: Discovery, sharedState: RedisConnection | None) -> list[NamedPolicy]:
    """
    The installed policies, minus those disabled, built in order and
    checked against L{IPolicy}; each is named as it was registered.
    """
    installed = {factory.name for factory in discovery.policies} | set(discovery.brokenPolicies)
    unknown = set(options["disable-policy"]) - installed
    if unknown:
        raise StartupError(f"--disable-policy: no installed policy named {', '.join(sorted(unknown))}")
    for name, reason in discovery.brokenPolicies.items():
        if name not in options["disable-policy"]:
            raise StartupError(
                f"{reason} (a relay never runs with fewer policies than installed: fix it, or --disable-policy {name})"
            )
    context = PolicyContext(reactor=reactor, options=options, sharedState=sharedState)
    policies = []
    for factory in discovery.policies:
        if factory.name in options["disable-policy"]:
            continue
        try:
            policy = factory.makePolicy(context)
            conformance(IPolicy, policy)
        except PluginError as e:
            raise StartupError(f"policy {factory.name} [{origin(factory)}]: {e}") from None
        except Exception as e:
            raise StartupError(f"policy {factory.name} cannot start: {type(e).__name__}: {e}") from None
        policies.append(NamedPolicy(factory.name, policy))
    return policies


def _requireTypes(snapshot: Snapshot, discovery: Discovery) -> None:
    """
    Refuse to start when a tenant needs an upstream type that is installed
    but broken; log each tenant upstream whose scheme no type handles.
    """
    types = discovery.typesByScheme()
    for tenant in snapshot.tenants.values():
        for upstream in tenant.upstreams:
            scheme = upstream.url.scheme
            if scheme in discovery.broken:
                raise StartupError(f"tenant {tenant.name} needs {discovery.broken[scheme]}")
            if scheme not in types:
                RelayService.log.error(
                    "tenant {tenant}: no upstream type installed for {scheme}:// ({url} will fail over)",
                    tenant=tenant.name,
                    scheme=scheme,
                    url=upstream.url.redacted(),
                )


def _checker(options, directory, store, reactor, threadPool):
    """The --auth checkers (the tenant store when none is given), asked in order."""
    checkers = options.get("credCheckers") or [TenantChecker()]
    for checker in checkers:
        if isinstance(checker, TenantChecker):
            checker.bind(directory, reactor, threadPool, store)
    return checkers[0] if len(checkers) == 1 else FirstOf(checkers)


class RelayService(MultiService):
    """
    Loads the tenants, then listens on every C{--smtp} and C{--smtps}
    endpoint.  The store and password hashing run on a dedicated thread
    pool, never on the reactor thread.
    """

    log = Logger()

    def __init__(self, options, reactor):
        super().__init__()
        self._options = options
        self._reactor = reactor
        self._ports = []
        self._metricsPort = None
        self._smtpFactories: list[SMTPServerFactory] = []
        self._draining = False
        discovery = discover()
        for problem in discovery.problems:
            self.log.error("plugin broken: {problem}", problem=problem)
        store, keyRing = _openStore(options)
        self.threadPool = ThreadPool(minthreads=1, maxthreads=options["store-threads"], name="smtprelay-store")
        self.directory = Directory(store, reactor, self.threadPool, options["refresh-interval"])
        self.directory.swap(store.loadSnapshot())
        _requireTypes(self.directory.snapshot, discovery)
        tls = _serverTLS(options)
        try:
            redact = AddressRedactor(options["log-addresses"], keyRing.hmacKey())
        except ValueError as e:
            raise StartupError(str(e)) from None
        shared = RedisConnection(options["rate-limit-store"], reactor) if options["rate-limit-store"] else None
        failures = MemoryAuthFailures(reactor, options["auth-failure-window"])
        if shared is not None:
            failures = RedisAuthFailures(shared, options["auth-failure-window"], failures)
        self.metrics = Metrics()
        self.usage = UsageRecorder(store, reactor, self.threadPool, options["usage-interval"])
        self.activity = ActivityRecorder(ActivityLog(store.engine), reactor, self.threadPool)
        reporter = Reporter(self.metrics, redact, self.usage, self.activity)
        upstreamContext = UpstreamContext(
            reactor=reactor,
            hostname=options["hostname"],
            threadPool=self.threadPool,
            timeout=options["upstream-timeout"],
            finalTimeout=options["upstream-final-timeout"],
            tokens=AccessTokens(
                reactor,
                refreshTokens=StoredRefreshTokens(store, reactor, self.threadPool),
                timeout=options["upstream-timeout"],
            ),
        )
        self.upstreams = UpstreamPool(
            discovery.typesByScheme(),
            upstreamContext,
            reporter,
            idleTimeout=options["upstream-idle-timeout"],
            maxPerUpstream=options["upstream-max-connections"],
        )
        self.context = ServerContext(
            reactor=reactor,
            hostname=options["hostname"],
            directory=self.directory,
            checker=_checker(options, self.directory, store, reactor, self.threadPool),
            policies=PolicyChain(
                _policies(options, reactor, discovery, shared),
                reactor,
                options["policy-timeout"],
                lambda name, client, verdict: reporter.refused(name, client, verdict.refusal),
            ),
            upstreams=self.upstreams,
            reporter=reporter,
            guard=ConnectionGuard(
                reactor,
                options["max-connections"],
                options["max-connections-per-ip"],
                options["max-auth-failures"],
                failures,
            ),
            tls=tls,
            allowInsecureAuth=options["allow-insecure-auth"],
            maxMessageSize=options["max-message-size"],
            maxRecipients=options["max-recipients"],
            idleTimeout=options["idle-timeout"],
            lineTimeout=options["line-timeout"],
            maxErrors=options["max-errors"],
            handshakeTimeout=options["handshake-timeout"],
            dataTimeout=options["data-timeout"],
            upstreamTimeout=options["upstream-timeout"],
        )

    def _factories(self):
        for description in self._options["smtp"]:
            factory = SMTPServerFactory(self.context, implicitTLS=False)
            self._smtpFactories.append(factory)
            yield description, factory
        for description in self._options["smtps"]:
            factory = SMTPServerFactory(self.context, implicitTLS=True)
            self._smtpFactories.append(factory)
            if not description.removeprefix(PROXY_PREFIX).startswith("ssl:"):
                factory = TLSMemoryBIOFactory(self.context.tls, False, factory)
            yield description, factory

    def _connections(self) -> list:
        return [protocol for factory in self._smtpFactories for protocol in factory.connections]

    def _endpoint(self, description: str, inherited: int | None):
        """
        Where to listen for C{description}: its endpoint, or the socket a
        C{--workers} parent opened for it (file descriptor C{inherited}).
        """
        inner = description.removeprefix(PROXY_PREFIX)
        if inherited is None:
            endpoint = serverFromString(self._reactor, inner)
        else:
            endpoint = AdoptedEndpoint(self._reactor, inherited)
        if description.startswith(PROXY_PREFIX):
            refusal = Reply.of(
                421, "4.7.0", f"{self._options['hostname']} PROXY protocol accepted only from trusted proxies"
            )
            endpoint = ProxiedEndpoint(
                endpoint,
                self._reactor,
                self._options["handshake-timeout"],
                self._options["trusted-proxy"],
                refusal.toBytes(),
            )
        return endpoint

    def setServiceParent(self, parent) -> None:
        useLogFormat(parent, self._options["log-format"])
        super().setServiceParent(parent)

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: ready when listening, with the store reachable, and not draining."""
        if self._draining:
            return False, "draining"
        if len(self._ports) < len(self._options["smtp"]) + len(self._options["smtps"]):
            return False, "starting"
        if not self.directory.reachable:
            return False, "tenant store unreachable"
        return True, "ready"

    def startService(self) -> None:
        super().startService()
        stopOnTerminate(self._reactor)
        self.threadPool.start()
        self.directory.start()
        self.usage.start()
        self.activity.start()
        inherited = self._options["inherit-fds"]
        if not inherited:  # under --workers the parent serves the metrics of all
            site = metricsSite(self.metrics.registry, self.readiness, self._reactor)
            d = serverFromString(self._reactor, self._options["metrics"]).listen(site)
            d.addCallback(lambda port: setattr(self, "_metricsPort", port))
            d.addErrback(self._cannotListen, self._options["metrics"])
        for i, (description, factory) in enumerate(self._factories()):
            d = self._endpoint(description, inherited[i] if inherited else None).listen(factory)
            d.addCallback(self._listening, description)
            d.addErrback(self._cannotListen, description)

    def _listening(self, port, description: str) -> None:
        self._ports.append(port)
        self.log.info("smtprelay listening on {description}", description=description)

    def _cannotListen(self, failure, description: str) -> None:
        self.log.critical("cannot listen on {description}: {error}", description=description, error=failure.value)
        self._reactor.stop()

    def stopService(self) -> Deferred:
        """
        Stop accepting; let transactions in flight finish for up to
        C{--drain-timeout} seconds while idle clients get C{421 4.3.2}; then
        close what remains and stop.
        """
        super().stopService()
        self._draining = True
        self.directory.stop()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await DeferredList([maybeDeferred(port.stopListening) for port in self._ports])
        for protocol in self._connections():
            protocol.drain()
        deadline = self._reactor.seconds() + self._options["drain-timeout"]
        while self._connections() and self._reactor.seconds() < deadline:
            await deferLater(self._reactor, 0.05)
        for protocol in self._connections():
            self.log.warn("drain time over: closing the connection from {client}", client=protocol.client.address)
            protocol.shutDown()
        await self.upstreams.closeIdle()
        await self.usage.stop()
        await self.activity.stop()
        self.threadPool.stop()
        if self._metricsPort is not None:
            await self._metricsPort.stopListening()
