"""
The LMTP upstream type: the session in memory (one end-of-data reply per
accepted recipient), URL validation, and end to end through a running relay
into the test server in LMTP mode over loopback TCP and a local socket.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyClass

from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamType
from relay.seams.upstream import UpstreamError
from relay.upstreams.lmtp import LMTPSession, LMTPUpstreamType
from relay.upstreams.smtpclient import SMTPClientProtocol
from tests.support.relay import splitTrace, upstreamURL
from tests.support.upstream import UpstreamServer
from tests.test_relay_e2e import MESSAGE

TIMEOUT = 5.0


def session(many: bool = True) -> tuple[LMTPSession, SMTPClientProtocol, StringTransport, Clock]:
    """An LMTP session over an in-memory connection, greeting read (C{many}: ?recipients=many)."""
    clock, transport = Clock(), StringTransport()
    protocol = SMTPClientProtocol(clock, TIMEOUT)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"220 lmtp.test LMTP\r\n")
    lmtp = LMTPSession(protocol, {}, finalTimeout=TIMEOUT)
    lmtp.many = many
    return lmtp, protocol, transport, clock


def fired(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def start(lmtp: LMTPSession, protocol: SMTPClientProtocol, rcptReplies: list[bytes]) -> None:
    """MAIL, one RCPT per reply given (answered with it), DATA and a message."""
    lmtp.mailFrom("a@example.com", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n")
    for n, reply in enumerate(rcptReplies):
        lmtp.rcptTo(f"r{n}@example.net", {})
        protocol.dataReceived(reply + b"\r\n")
    lmtp.data()
    protocol.dataReceived(b"354 Go ahead\r\n")
    lmtp.write(b"Subject: x\r\n\r\nbody\r\n")


def test_provides_interfaces():
    """The LMTP type and its sessions provide the plugin interfaces."""
    verifyClass(IUpstreamType, LMTPUpstreamType)
    verifyClass(IUpstreamSession, LMTPSession)


def test_end_waits_for_one_reply_per_accepted_recipient():
    """After the dot, end() fires only once every recipient accepted at RCPT was answered, in RCPT order."""
    lmtp, protocol, transport, _ = session()
    start(lmtp, protocol, [b"250 2.1.5 Ok", b"550 5.1.1 No such user", b"250 2.1.5 Ok"])
    replies = fired(lmtp.end())
    assert transport.value().endswith(b"body\r\n.\r\n")
    protocol.dataReceived(b"250 2.0.0 <r0> delivered\r\n")
    assert replies == []
    protocol.dataReceived(b"452 4.2.2 <r2> mailbox full\r\n")
    [[first, second]] = replies
    assert (first.code, second.code) == (250, 452)


def test_count_starts_again_with_each_transaction():
    """The next transaction on the same connection expects replies for its own recipients only."""
    lmtp, protocol, _, _ = session()
    start(lmtp, protocol, [b"250 2.1.5 Ok", b"250 2.1.5 Ok"])
    lmtp.end()
    protocol.dataReceived(b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n")
    lmtp.reset()  # the relay resets before every reuse; nothing is pending, so no RSET is sent
    start(lmtp, protocol, [b"250 2.1.5 Ok"])
    replies = fired(lmtp.end())
    protocol.dataReceived(b"250 2.0.0 Ok\r\n")
    assert [len(r) for r in replies] == [1]


def test_one_recipient_per_transaction():
    """Without ?recipients=many, a second RCPT is answered 452 4.5.3 here and never sent (RFC 5321 §4.5.3.1.10)."""
    lmtp, protocol, transport, _ = session(many=False)
    lmtp.mailFrom("a@example.com", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n")
    lmtp.rcptTo("r0@example.net", {})
    protocol.dataReceived(b"250 2.1.5 Ok\r\n")
    transport.clear()
    [reply] = fired(lmtp.rcptTo("r1@example.net", {}))
    assert (reply.code, reply.enhanced) == (452, "4.5.3") and transport.value() == b""
    lmtp.reset()
    protocol.dataReceived(b"250 2.0.0 Ok\r\n")
    lmtp.mailFrom("a@example.com", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n")
    assert fired(lmtp.rcptTo("r1@example.net", {})) == []  # sent, and waiting for its reply
    assert transport.value().endswith(b"RCPT TO:<r1@example.net>\r\n")


def test_missing_reply_times_out():
    """A server that answers only some recipients: end() fails with a timeout, once."""
    lmtp, protocol, _, clock = session()
    start(lmtp, protocol, [b"250 2.1.5 Ok", b"250 2.1.5 Ok"])
    result = fired(lmtp.end())
    protocol.dataReceived(b"250 2.0.0 Ok\r\n")
    clock.advance(TIMEOUT)
    [failure] = result
    assert failure.check(UpstreamError) and failure.value.kind == "timeout"


@pytest.mark.parametrize(
    "url, problem",
    [
        ("lmtp:///var/run/lmtp", "needs a host"),
        ("lmtp://mail.example.com/inbox", "has no path"),
        ("lmtp://mail.example.com?frobnicate=1", "unknown option 'frobnicate'"),
        ("lmtp://mail.example.com?timeout=-1", "timeout must be a positive"),
        ("lmtp+unix://host/run/lmtp", "absolute socket path"),
        ("lmtp+unix:relative/path", "absolute socket path"),
        ("lmtp+unix:///run/lmtp?verify=no", "takes only \\?timeout="),
        ("lmtp+unix://user:pw@/run/lmtp", "no TLS or credentials"),
        ("lmtp+unix:///run/lmtp?timeout=soon", "timeout must be a positive"),
        ("smtp://mail.example.com", "not an LMTP URL"),
    ],
)
def test_bad_urls(url, problem):
    """Bad LMTP URLs are refused with a reason."""
    with pytest.raises(ValueError, match=problem):
        LMTPUpstreamType().validate(UpstreamURL.parse(url))


@pytest.mark.parametrize(
    "url", ["lmtp://mail.example.com", "lmtp://10.0.0.1:2424?timeout=5&verify=no", "lmtp+unix:///run/lmtp?timeout=3"]
)
def test_good_urls(url):
    """Well-formed LMTP URLs pass validation."""
    LMTPUpstreamType().validate(UpstreamURL.parse(url))


# -- end to end ---------------------------------------------------------------


@pytest.fixture
def lmtp():
    """An LMTP server on loopback TCP."""
    with UpstreamServer(lmtp=True) as server:
        yield server


def test_lmtp_one_recipient_per_transaction(relay, lmtp, tenantName):
    """By default an LMTP transaction takes one recipient: the others get 452 4.5.3 and go in the next one."""
    account = relay.addTenant(tenantName, upstreamURL(lmtp, "lmtp"))
    with relay.connect(account) as client:
        refused = client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE)
        assert {r: code for r, (code, _) in refused.items()} == {"c@example.net": 452}
        assert refused["c@example.net"][1].startswith(b"4.5.3 One recipient per LMTP transaction")
        assert client.sendmail("a@example.com", ["c@example.net"], MESSAGE) == {}
    first, second = lmtp.waitForMessages(2)
    assert (first.delivered, second.delivered) == (("b@example.net",), ("c@example.net",))
    assert lmtp.connections == 1


def test_lmtp_two_recipients(relay, lmtp, tenantName):
    """With ?recipients=many, two recipients over LHLO: 250, the exact message; the connection is reused."""
    account = relay.addTenant(tenantName, upstreamURL(lmtp, "lmtp", recipients="many"))
    with relay.connect(account) as client:
        for _ in range(2):
            assert client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE) == {}
    first, second = lmtp.waitForMessages(2)
    assert first.delivered == second.delivered == ("b@example.net", "c@example.net")
    assert splitTrace(first.data)[1] == MESSAGE
    assert lmtp.verbs(0)[:2] == ["LHLO", "MAIL"] and lmtp.connections == 1


def test_lmtp_unix_socket(relay, tenantName):
    """lmtp+unix:// delivers over a local socket."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:  # short: socket paths are limited to ~100 bytes
        path = Path(directory) / "lmtp.sock"
        with UpstreamServer(lmtp=True, unix=path) as server:
            account = relay.addTenant(tenantName, f"lmtp+unix://{path}?timeout=5")
            with relay.connect(account) as client:
                assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
            [message] = server.waitForMessages(1)
            assert splitTrace(message.data)[1] == MESSAGE


@pytest.mark.parametrize(
    "scripted, expected",
    [
        ({"c@example.net": "452 4.2.2 Mailbox full"}, b"452 4.2.2 Mailbox full"),
        (
            {"c@example.net": "550 5.1.1 No such user"},
            b"451 4.5.0 Delivered to some recipients only; try again for the others",
        ),
        (
            {"b@example.net": "550 5.1.1 No such user", "c@example.net": "452 4.2.2 Mailbox full"},
            b"452 4.2.2 Mailbox full",
        ),
    ],
    ids=["temporary", "permanent", "temporary-wins"],
)
def test_lmtp_mixed_result(relay, lmtp, tenantName, scripted, expected):
    """
    With ?recipients=many, a recipient failing at end of data: never a 5xx
    for a copy that was delivered, the first temporary failure when there
    is one, a 5xx only when every recipient failed for good.
    """
    account = relay.addTenant(tenantName, upstreamURL(lmtp, "lmtp", recipients="many"))
    for recipient, reply in scripted.items():
        lmtp.setReply("EOD", reply, match=recipient)
    with relay.connect(account) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        client.rcpt("c@example.net")
        code, text = client.data(MESSAGE)
    assert f"{code} ".encode() + text.split(b" (queue id ")[0] == expected
    [transaction] = lmtp.transactions
    assert transaction.delivered == tuple(r for r in ("b@example.net", "c@example.net") if r not in scripted)


def test_lmtp_starttls(relay, upstreamCert, tenantName):
    """lmtp:// uses STARTTLS when the server offers it, verified with ?ca=, like smtp://."""
    with UpstreamServer(lmtp=True, tls=upstreamCert) as server:
        account = relay.addTenant(tenantName, upstreamURL(server, "lmtp", ca=str(relay.ca.cert)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        [message] = server.waitForMessages(1)
        assert message.tls
