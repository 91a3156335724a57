"""
relay.runtime.reactor: the workers' epoll reactor delivers every event to its
connection without Twisted's legacy log context, and still contains a
connection's errors.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python import log as legacyLog

from relay.runtime.reactor import DirectEPollReactor
from tests.support.relay import RelayProcess, upstreamURL
from tests.support.upstream import UpstreamServer


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.transport.write(b"ping\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


@pytest.fixture
def reactor():
    reactor = DirectEPollReactor()
    yield reactor
    reactor.disconnectAll()
    reactor.removeAll()


def spin(reactor, until: Callable[[], bool]) -> None:
    for _ in range(500):  # at most ~5 s
        if until():
            return
        reactor.iterate(0.01)
    raise AssertionError("the reactor did not get there in time")


def connectPair(reactor, serverProtocol: type[Protocol]) -> Collect:
    port = reactor.listenTCP(0, Factory.forProtocol(serverProtocol), interface="127.0.0.1")
    client = Collect()
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: client
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
    return client


def test_reads_and_writes_reach_the_connections_without_the_log_context(reactor, monkeypatch):
    calls = []
    monkeypatch.setattr(legacyLog, "callWithLogger", lambda *a, **kw: calls.append(a))
    client = connectPair(reactor, Echo)
    spin(reactor, lambda: client.received == b"ping\r\n")
    assert calls == []


class Broken(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("a bug in a protocol")


def test_an_error_in_a_connection_is_logged_and_closes_only_that_connection(reactor):
    events: list[dict] = []
    legacyLog.addObserver(events.append)  # the reactor reports it with log.err
    try:
        broken = connectPair(reactor, Broken)
        healthy = connectPair(reactor, Echo)
        spin(reactor, lambda: broken.lost is not None and healthy.received == b"ping\r\n")
    finally:
        legacyLog.removeObserver(events.append)
    assert healthy.lost is None
    assert [e["failure"].getErrorMessage() for e in events if e.get("isError")] == ["a bug in a protocol"]


def test_twistd_offers_it_as_smtprelay_epoll():
    from twisted.application.reactors import getReactorTypes

    installers = {r.shortName: r for r in getReactorTypes()}
    assert installers["smtprelay-epoll"].moduleName == "relay.runtime.reactor"


def test_a_single_process_relay_runs_on_it_with_twistd_r(ca, upstreamCert, tmp_path):
    relay = RelayProcess(tmp_path / "relay", ca, reactor="smtprelay-epoll")
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("reactor", upstreamURL(up, ca=str(ca.cert)))
            with relay.connect(account) as client:
                message = b"From: a@example.com\r\nSubject: reactor\r\n\r\nhi\r\n"
                assert client.sendmail("a@example.com", ["b@example.net"], message) == {}
            assert len(up.waitForMessages(1)) == 1
        assert "reactor class: relay.core.twistedprivate.DirectEPollReactor" in relay.log()
    finally:
        assert relay.stop() == 0
