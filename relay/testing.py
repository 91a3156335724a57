"""
In-memory test doubles, shipped with the code so plugin authors can test
against them too: an upstream type whose sessions record what they get and
answer as told, a directory, a credential checker, and a L{ServerContext}
wired from them.  No sockets, no threads: pair them with
C{twisted.internet.testing.MemoryReactorClock} and C{StringTransport}.
"""

from __future__ import annotations

import ipaddress
from base64 import b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.tenant import Login, Snapshot, Tenant, Upstream
from relay.core.urls import UpstreamURL
from relay.policy.chain import NamedPolicy, PolicyChain
from relay.seams.interfaces import IPolicy, IUpstreamSession, IUpstreamType
from relay.seams.registration import conformance
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.server.context import ServerContext
from relay.server.guard import ConnectionGuard, MemoryAuthFailures
from relay.server.protocol import SMTPServerFactory
from relay.telemetry.metrics import Metrics
from relay.telemetry.report import AddressRedactor, Reporter
from relay.upstreams.pool import UpstreamPool

__all__ = [
    "FakeChecker",
    "FakeDirectory",
    "FakeUpstreamSession",
    "FakeUpstreamType",
    "ACME",
    "Delivered",
    "InlineThreads",
    "MemoryClient",
    "checkSession",
    "fakeServerContext",
    "tenantWith",
]


@dataclass
class Delivered:
    """A message a fake upstream session completed."""

    sender: str
    recipients: list[str]
    data: bytes


@implementer(IUpstreamSession)
class FakeUpstreamSession:
    """
    Records one transaction at a time and answers from C{replies}, keyed by
    C{"MAIL"}, C{"RCPT"}, C{"DATA"}, C{"END"} and C{"RSET"}; C{"MAIL host"}
    and C{"RCPT address"} answer for one upstream host or one recipient.  A verb listed
    in C{hold} gets a Deferred that the test fires from C{held[verb]}.

    @ivar calls: every method called, in order, for assertions.
    @ivar delivered: the upstream type's list of completed messages.
    """

    def __init__(self, kind: FakeUpstreamType, host: str):
        self._kind = kind
        self.host = host
        self.alive = True
        self.calls: list[str] = []
        self.held: dict[str, Deferred] = {}  # the last call of each held verb
        self.heldAll: dict[str, list[Deferred]] = {}  # every call of each, in order
        self.producer = None
        self._sender = ""
        self._recipients: list[str] = []
        self._data: list[bytes] = []

    def _answer(self, verb: str, value=None) -> Deferred:
        self.calls.append(verb)
        if verb in self._kind.hold:
            d: Deferred = Deferred()
            self.held[verb] = d
            self.heldAll.setdefault(verb, []).append(d)
            return d
        if verb in self._kind.errors:
            return fail(UpstreamError("lost", f"scripted failure at {verb}"))
        return succeed(value if value is not None else self._kind.replies[verb])

    def mailFrom(self, sender, parameters):
        self._sender, self._recipients, self._data = sender, [], []
        return self._answer("MAIL", self._kind.replies.get(f"MAIL {self.host}"))

    def rcptTo(self, recipient, parameters):
        reply = self._kind.replies.get(f"RCPT {recipient}", self._kind.replies["RCPT"])
        if reply.positive:
            self._recipients.append(recipient)
        return self._answer("RCPT", reply)

    def data(self):
        return self._answer("DATA")

    def write(self, data: bytes) -> None:
        self._data.append(data)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    @property
    def written(self) -> bytes:
        return b"".join(self._data)

    def end(self):
        reply = self._kind.replies["END"]

        def delivered(replies):
            if replies[0].positive:
                self._kind.delivered.append(Delivered(self._sender, list(self._recipients), self.written))
            return replies

        return self._answer("END", [reply]).addCallback(delivered)

    def abort(self) -> None:
        self.calls.append("ABORT")
        self.alive = False

    def reset(self):
        return self._answer("RSET", self._kind.replies["RSET"]).addCallback(lambda _: None)

    def close(self):
        self.calls.append("QUIT")
        self.alive = False
        return succeed(None)


@implementer(IUpstreamType)
class FakeUpstreamType:
    """
    The C{fake://} upstream type.  Hosts listed in C{unreachable} fail to
    open, as a refused connection would; C{attempts} lists the host of
    every open, in order.
    """

    name = "fake"
    schemes = ("fake",)

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {
            "MAIL": Reply.of(250, "2.1.0", "Ok"),
            "RCPT": Reply.of(250, "2.1.5", "Ok"),
            "DATA": Reply.of(354, None, "Go ahead"),
            "END": Reply.of(250, "2.0.0", "Ok: queued"),
            "RSET": Reply.of(250, "2.0.0", "Ok"),
        }
        self.hold: set[str] = set()
        self.errors: set[str] = set()
        self.unreachable: set[str] = set()
        self.attempts: list[str] = []
        self.sessions: list[FakeUpstreamSession] = []
        self.delivered: list[Delivered] = []

    def validate(self, url: UpstreamURL) -> None:
        if not url.host:
            raise ValueError("fake URLs need a host")

    def open(self, url: UpstreamURL, context: UpstreamContext):
        self.attempts.append(url.host)
        if url.host in self.unreachable:
            return fail(UpstreamError("connect", f"{url.host} refused the connection"))
        session = FakeUpstreamSession(self, url.host)
        self.sessions.append(session)
        return succeed(session)


@dataclass
class FakeDirectory:
    """Tenants and logins held in plain dicts."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    logins: dict[str, Login] = field(default_factory=dict)

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot(0, self.tenants, self.logins)

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def login(self, username: str) -> Login | None:
        return self.logins.get(username)

    def tenantForAddress(self, address: str) -> Tenant | None:
        ip = ipaddress.ip_address(address)
        return next(
            (t for t in self.tenants.values() for n in t.networks if n.noAuth and ip in n.network and t.active), None
        )


@implementer(ICredentialsChecker)
class FakeChecker:
    """Plain-text passwords: C{{username: (password, tenant)}}."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: Mapping[str, tuple[str, str]]):
        self._accounts = accounts

    def requestAvatarId(self, credentials):
        username = credentials.username.decode() if isinstance(credentials.username, bytes) else credentials.username
        password = credentials.password.decode() if isinstance(credentials.password, bytes) else credentials.password
        account = self._accounts.get(username)
        if account is None or account[0] != password:
            return fail(UnauthorizedLogin())
        return succeed(account[1])


def tenantWith(*urls: str, domains: frozenset[str] = frozenset({"example.com"})) -> Tenant:
    """A tenant like L{ACME} whose upstreams are these URLs, in priority order."""
    return Tenant(
        "acme",
        upstreams=tuple(Upstream(UpstreamURL.parse(url), 10 * (i + 1)) for i, url in enumerate(urls)),
        domains=domains,
    )


ACME = Tenant(
    "acme",
    upstreams=(Upstream(UpstreamURL.parse("fake://primary"), 10), Upstream(UpstreamURL.parse("fake://backup"), 20)),
    domains=frozenset({"example.com"}),
)
"""The tenant of L{fakeServerContext}."""


def _named(policies: Mapping[str, IPolicy] | Sequence[IPolicy]) -> list[tuple[str, IPolicy]]:
    """Policies by name: as given in a mapping, else named after their class."""
    if isinstance(policies, Mapping):
        return list(policies.items())
    return [(type(policy).__name__, policy) for policy in policies]


def fakeServerContext(
    reactor,
    upstreamType: IUpstreamType | None = None,
    policies: Mapping[str, IPolicy] | Sequence[IPolicy] = (),
    tenant: Tenant = ACME,
    **settings,
) -> ServerContext:
    """
    A L{ServerContext} with one tenant (L{ACME} unless given: login C{alice}
    / C{secret}, upstreams C{fake://primary} and C{fake://backup})
    delivering to C{upstreamType} (a L{FakeUpstreamType} by default; any
    upstream type, for the schemes it handles: see L{tenantWith}), with
    fresh metrics.  C{policies} run in
    order, named as in a mapping (the names metrics and logs show) or after
    their class.  C{settings} override L{ServerContext} fields.
    """
    kind = upstreamType or FakeUpstreamType()
    reporter = Reporter(Metrics(processMetrics=False), AddressRedactor("full"))
    # InlineThreads is its own thread pool; otherwise a pool never started (the fake type needs none).
    pool = cast(ThreadPool, reactor) if isinstance(reactor, InlineThreads) else ThreadPool(0, 1)
    context = UpstreamContext(reactor=reactor, hostname="relay.test", threadPool=pool, timeout=30.0)
    fields = dict(
        reactor=reactor,
        hostname="relay.test",
        directory=FakeDirectory({tenant.name: tenant}),
        checker=FakeChecker({"alice": ("secret", tenant.name)}),
        policies=PolicyChain(
            [NamedPolicy(name, policy) for name, policy in _named(policies)],
            reactor,
            onRefusal=lambda name, client, verdict: reporter.refused(name, client, verdict.refusal),
        ),
        upstreams=UpstreamPool({scheme: kind for scheme in kind.schemes}, context, reporter),
        reporter=reporter,
        guard=ConnectionGuard(reactor, 100, 10, 5, MemoryAuthFailures(reactor, 900.0)),
        allowInsecureAuth=True,
    )
    fields.update(settings)
    return ServerContext(**fields)


def checkSession(session: object) -> None:
    """
    Check a session against L{IUpstreamSession} exactly as the relay does
    when it opens one (C{IConsumer}'s C{write}, C{registerProducer} and
    C{unregisterProducer} included).

    @raise relay.seams.registration.PluginError: saying what is missing.
    """
    conformance(IUpstreamSession, session)


class InlineThreads(MemoryReactorClock):
    """
    A clock that is also a thread pool running work at once, on the calling
    thread: pass it as both reactor and pool to code that uses
    C{deferToThreadPool}, and a unit test needs no threads.
    """

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        try:
            result = f(*args, **kwargs)
        except Exception:
            onResult(False, Failure())
        else:
            onResult(True, result)


class _TLSStringTransport(StringTransport):
    """A StringTransport that records when TLS is started."""

    tlsStarted = None

    def startTLS(self, options):
        self.tlsStarted = options


class MemoryClient:
    """
    One client connection to a relay protocol, in memory: what it sends goes
    to the protocol, what the relay answers comes back as lines.  Time is a
    C{MemoryReactorClock} (C{client.reactor.advance(seconds)}).

    @param upstream: the upstream type the tenant delivers to: a
        L{FakeUpstreamType} by default, or your own (give C{tenant=
        tenantWith("yourscheme://...")} then).
    @param address: the client's IP address.
    @param context: share this relay with other clients (C{client.context}).
    @param settings: passed to L{fakeServerContext} (C{policies=[...]},
        C{tenant=...}, L{ServerContext} fields).
    """

    def __init__(
        self,
        upstream: IUpstreamType | None = None,
        address: str = "192.0.2.7",
        context: ServerContext | None = None,
        **settings,
    ):
        self.upstream = upstream or FakeUpstreamType()
        self.context = context or fakeServerContext(MemoryReactorClock(), self.upstream, **settings)
        self.reactor = self.context.reactor
        self.protocol = SMTPServerFactory(self.context, implicitTLS=False).buildProtocol(None)
        self.transport = _TLSStringTransport(peerAddress=IPv4Address("TCP", address, 40000))
        self.protocol.makeConnection(self.transport)
        self.greeting = self.read()

    def refusals(self) -> dict[str, float]:
        """C{smtprelay_policy_rejections_total} by policy name, as the relay counted them."""
        [metric] = self.context.reporter.metrics.policyRejections.collect()
        samples = metric.samples
        return {s.labels["policy"]: s.value for s in samples if s.name.endswith("_total")}

    def read(self) -> list[str]:
        """The reply lines written since the last read."""
        lines = self.transport.value().decode().split("\r\n")[:-1]
        self.transport.clear()
        return lines

    def send(self, data: bytes) -> list[str]:
        """Send bytes; return the reply lines they produced at once."""
        self.protocol.dataReceived(data)
        return self.read()

    def login(self, username: str = "alice", password: str = "secret") -> None:
        """EHLO and AUTH PLAIN, which must succeed."""
        credentials = b64encode(f"\0{username}\0{password}".encode())
        lines = self.send(b"EHLO client.test\r\nAUTH PLAIN " + credentials + b"\r\n")
        assert lines[-1].startswith("235 2.7.0"), lines

    def relay(self, sender: str, recipients: list[str], message: bytes) -> list[str]:
        """One transaction after login: the replies to MAIL, each RCPT, DATA and the final dot."""
        commands = f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in recipients) + "DATA\r\n"
        lines = self.send(commands.encode())
        if lines[-1].startswith("354"):
            lines += self.send(message + b".\r\n")
        return lines
