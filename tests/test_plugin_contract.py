"""
What the plugin guide (docs/plugins.md) promises, in memory: a policy that
raises, answers something that is not a verdict, or takes too long
tempfails the transaction and is logged by its plugin name; plugins that do
not conform are refused when they load, naming what is missing; an upstream
refusing DATA; a store outage keeps the last snapshot; the explicit state
machines refuse impossible transitions.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.tenant import Snapshot, Tenant
from relay.plugin import CONTINUE, IUpstreamType, Policy, PolicyPlugin, UpstreamTypePlugin, reject
from relay.runtime.directory import Directory
from relay.seams.discovery import discover
from relay.seams.interfaces import IPolicy
from relay.seams.registration import PluginError, conformance
from relay.seams.upstream import UpstreamError
from relay.server.protocol import IllegalTransition, Mode
from relay.testing import FakeUpstreamType, InlineThreads, MemoryClient, fakeServerContext
from relay.upstreams.webhook import PostState, _Post
from tests.support.logevents import Events

MESSAGE = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
TEMPFAIL = "451 4.3.0 Temporary policy failure, try again later"


def relayWith(policy) -> MemoryClient:
    reactor = MemoryReactorClock()
    upstream = FakeUpstreamType()
    context = fakeServerContext(reactor, upstream, policies={"my-policy": policy})  # hook timeout: 30 s
    return MemoryClient(upstream, context=context)


class Raises(Policy):
    def mailFrom(self, client, transaction):
        raise RuntimeError("bug")


class NotAVerdict(Policy):
    def mailFrom(self, client, transaction):
        return "yes please"


class Slow(Policy):
    def mailFrom(self, client, transaction):
        return Deferred()


@pytest.mark.parametrize("policy", [Raises, NotAVerdict], ids=["raises", "not-a-verdict"])
def test_broken_policy_tempfails(policy):
    """A policy that raises or answers nonsense tempfails the transaction (451 4.3.0), logged by its name."""
    client = relayWith(policy(None))
    client.login()
    with Events() as events:
        assert client.send(b"MAIL FROM:<a@example.com>\r\n") == [TEMPFAIL]
    assert any(e.get("policy") == "my-policy" for e in events)
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]  # the session goes on
    assert client.context.reporter.metrics.policyRejections.labels("my-policy")._value.get() == 1


def test_slow_policy_times_out():
    """A policy hook slower than --policy-timeout tempfails, and the session goes on."""
    client = relayWith(Slow(None))
    client.login()
    with Events() as events:
        assert client.send(b"MAIL FROM:<a@example.com>\r\n") == []
        client.reactor.advance(30)
    assert client.read() == [TEMPFAIL]
    assert any(e.get("policy") == "my-policy" and "log_failure" in e for e in events)
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_policy_named_by_registration():
    """Refusals count under the name the policy was registered with, never 'unnamed'."""

    class Refuses(Policy):
        def mailFrom(self, client, transaction):
            return reject(550, "5.7.1", "no")

    client = relayWith(Refuses(None))
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\n")
    samples = client.context.reporter.metrics.policyRejections.collect()[0].samples
    assert {s.labels["policy"] for s in samples} == {"my-policy"}


def test_policy_gets_its_context():
    """Policy's constructor keeps the context it is given."""
    context = object()
    assert Policy(context).context is context


def test_upstream_refusing_data():
    """An upstream refusing DATA: the client gets its reply after its dot, nothing delivered, the session reset."""
    upstream = FakeUpstreamType()
    upstream.replies["DATA"] = Reply.of(554, "5.3.4", "No DATA for you")
    client = MemoryClient(upstream)
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert lines[-1].startswith("354 ")  # ours, at once: the upstream's answer is looked at after the dot
    assert client.send(MESSAGE + b".\r\n")[0].startswith("554 5.3.4 No DATA for you (queue id ")
    assert upstream.sessions[0].calls == ["MAIL", "RCPT", "DATA", "RSET"]
    assert upstream.delivered == []


# -- conformance at load -------------------------------------------------------


@implementer(IUpstreamType)
class NoOpen:
    name = "noopen"
    schemes = ("noopen",)

    def validate(self, url):
        pass


class NoHooks:
    """Not a policy: declares nothing."""


def test_conformance_names_what_is_missing():
    """The check names the interface and the missing method."""
    with pytest.raises(PluginError, match="IUpstreamType: missing 'open'"):
        conformance(IUpstreamType, NoOpen())
    with pytest.raises(PluginError, match=r"does not declare IPolicy \(add @implementer\(IPolicy\)\)"):
        conformance(IPolicy, NoHooks, isClass=True)


def test_registration_refused_at_load():
    """A registered implementation that does not conform, or says other names, is refused when loaded."""
    with pytest.raises(PluginError, match="missing 'open'"):
        UpstreamTypePlugin("noopen", ("noopen",), f"{__name__}.NoOpen", "x").load()
    with pytest.raises(PluginError, match="registered as other for other, but the implementation says fake for fake"):
        UpstreamTypePlugin("other", ("other",), "relay.testing.FakeUpstreamType", "x").load()
    with pytest.raises(PluginError, match="cannot import nowhere.Nothing"):
        UpstreamTypePlugin("x", ("x",), "nowhere.Nothing", "x").load()
    with pytest.raises(PluginError, match="IPolicy"):
        PolicyPlugin("nohooks", f"{__name__}.NoHooks", "x").load()


def test_builtins_conform():
    """Every installed plugin loads and conforms: nothing is listed broken."""
    found = discover()
    assert found.problems == [] and found.broken == {}
    assert {"smtp", "lmtp", "maildir", "https"} <= set(found.typesByScheme())


# -- the store, and the state machines -------------------------------------------


class FlakyStore:
    def __init__(self) -> None:
        self.down = False
        self.loads = 0

    def generation(self) -> int:
        if self.down:
            raise OSError("database unreachable")
        return 2

    def loadSnapshot(self) -> Snapshot:
        self.loads += 1
        return Snapshot(generation=2)


def test_store_outage_keeps_the_last_snapshot():
    """While the store cannot be reached, relaying goes on with the last snapshot; readiness says so."""
    clock = InlineThreads()
    store = FlakyStore()
    directory = Directory(store, clock, clock, interval=2.0)
    directory.swap(Snapshot(generation=1, tenants={"acme": Tenant("acme")}))
    store.down = True
    directory.start()
    clock.advance(2)
    assert directory.reachable is False and directory.tenant("acme") is not None and store.loads == 0
    store.down = False
    clock.advance(2)
    assert directory.reachable is True and store.loads == 1 and directory.snapshot.generation == 2


def test_protocol_refuses_impossible_modes():
    """The connection modes follow their table: DATA cannot turn into AUTH."""
    client = MemoryClient()
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert client.protocol._mode is Mode.DATA
    with pytest.raises(IllegalTransition, match="data -> auth"):
        client.protocol._enter(Mode.AUTH)


def test_webhook_post_refuses_impossible_states():
    """A finished POST cannot start streaming again."""

    class Agent:
        def request(self, method, uri, headers, body):
            return Deferred()

    post = _Post(Agent(), b"http://hook/", None, MemoryReactorClock(), 30.0, 540.0)
    post.cancel(UpstreamError("lost", "x"))
    assert post.state is PostState.DONE
    with pytest.raises(Exception, match="done -> streaming"):
        post._enter(PostState.STREAMING)


def test_continue_is_the_default_verdict():
    """Every hook of the base class lets the message through."""
    policy = Policy(None)
    assert policy.mailFrom(None, None) is CONTINUE and policy.endOfData(None, None) is CONTINUE
