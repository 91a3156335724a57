"""
The server protocol and relay session, in memory: a StringTransport for the
client, a MemoryReactorClock for time and the fake upstream of relay.testing.
"""

from base64 import b64encode

import pytest

from relay.core.reply import Reply
from relay.testing import FakeUpstreamType
from relay.testing import MemoryClient as Client

PLAIN = b64encode(b"\0alice\0secret")


def test_greeting():
    """The relay greets with 220 and its name."""
    assert Client().greeting == ["220 relay.test ESMTP smtprelay"]


def test_ehlo_advertises_extensions():
    """EHLO lists what is really supported, without an enhanced code."""
    lines = Client().send(b"EHLO client.test\r\n")
    assert lines[0] == "250-relay.test Hello [192.0.2.7]"
    assert lines[1:] == [
        "250-PIPELINING",
        f"250-SIZE {50 * 1024 * 1024}",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250-DSN",
        "250 AUTH PLAIN LOGIN",
    ]


def test_mail_needs_auth():
    """Unauthenticated MAIL is refused: the relay is never open."""
    assert Client().send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")[-1] == "530 5.7.0 Authentication required"


def test_auth_needs_tls():
    """Without TLS (and without --allow-insecure-auth) AUTH is not offered or accepted."""
    client = Client(allowInsecureAuth=False)
    lines = client.send(b"EHLO c\r\n")
    assert not any("AUTH" in line for line in lines)
    assert client.send(b"AUTH PLAIN " + PLAIN + b"\r\n") == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]


def test_auth_plain():
    """AUTH PLAIN with an initial response, right and wrong."""
    client = Client()
    client.send(b"EHLO c\r\n")
    bad = b64encode(b"\0alice\0wrong")
    assert client.send(b"AUTH PLAIN " + bad + b"\r\n") == []  # a failure is answered after a delay
    client.reactor.advance(1)
    assert client.read() == ["535 5.7.8 Authentication credentials invalid"]
    assert client.send(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["235 2.7.0 Authentication successful"]
    assert client.send(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["503 5.5.1 Error: already authenticated"]


def test_auth_plain_challenge():
    """AUTH PLAIN without an initial response gets an empty challenge."""
    client = Client()
    client.send(b"EHLO c\r\n")
    assert client.send(b"AUTH PLAIN\r\n") == ["334 "]
    assert client.send(PLAIN + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_login():
    """AUTH LOGIN prompts for Username: and Password:."""
    client = Client()
    client.send(b"EHLO c\r\n")
    assert client.send(b"AUTH LOGIN\r\n") == ["334 " + b64encode(b"Username:").decode()]
    assert client.send(b64encode(b"alice") + b"\r\n") == ["334 " + b64encode(b"Password:").decode()]
    assert client.send(b64encode(b"secret") + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_login_initial_response():
    """AUTH LOGIN with the user name on the command line prompts for the password."""
    client = Client()
    client.send(b"EHLO c\r\n")
    assert client.send(b"AUTH LOGIN " + b64encode(b"alice") + b"\r\n") == ["334 " + b64encode(b"Password:").decode()]
    assert client.send(b64encode(b"secret") + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_cancel_and_garbage():
    """'*' cancels; bad base64 is refused; the connection stays usable."""
    client = Client()
    client.send(b"EHLO c\r\n")
    client.send(b"AUTH LOGIN\r\n")
    assert client.send(b"*\r\n") == ["501 5.0.0 Authentication cancelled"]
    assert client.send(b"AUTH PLAIN !!!\r\n") == ["501 5.5.2 Malformed authentication response"]
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_auth_unknown_mechanism():
    """Only PLAIN and LOGIN are offered."""
    client = Client()
    client.send(b"EHLO c\r\n")
    assert client.send(b"AUTH CRAM-MD5\r\n") == ["504 5.5.4 Unrecognized authentication type"]


def relayOne(client: Client, message: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> list[str]:
    client.login()
    return client.send(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    ) + client.send(message + b".\r\n")


def test_pipelined_transaction():
    """A pipelined group is answered in order, in one write, and relayed."""
    client = Client()
    lines = relayOne(client)
    assert lines[:4] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert lines[4].startswith("250 2.0.0 Ok: queued (queue id ")
    [message] = client.upstream.delivered
    assert message.sender == "a@example.com"
    assert message.recipients == ["b@example.net", "c@example.net"]
    assert message.data.startswith(
        b"Received: from client.test ([192.0.2.7])\r\n\tby relay.test (smtprelay) with ESMTPA"
    )
    assert message.data.endswith(b"\r\nSubject: hi\r\n\r\nbody\r\n")


def test_mail_answered_by_the_relay_rcpt_by_the_upstream():
    """MAIL is answered once the policies pass; the RCPT reply waits for the upstream's, and later commands wait too."""
    upstream = FakeUpstreamType()
    upstream.hold.add("RCPT")
    client = Client(upstream)
    client.login()
    assert client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n") == ["250 2.1.0 Ok"]
    session = upstream.sessions[0]
    assert session.calls == ["MAIL", "RCPT"]  # MAIL went with the first RCPT
    session.held["RCPT"].callback(Reply.of(250, "2.1.5", "Recipient ok"))
    assert client.read() == ["250 2.1.5 Recipient ok", "250 2.0.0 Ok"]


def test_pipelined_recipients_go_upstream_together():
    """RCPTs the client pipelines go upstream without waiting for one another; replies stay in order."""
    upstream = FakeUpstreamType()
    upstream.hold.add("RCPT")
    client = Client(upstream)
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n")
    assert lines == ["250 2.1.0 Ok"]
    session = upstream.sessions[0]
    assert session.calls == ["MAIL", "RCPT", "RCPT"]  # the second went up before the first was answered
    second, first = session.heldAll["RCPT"].pop(), session.heldAll["RCPT"].pop()
    second.callback(Reply.of(250, "2.1.5", "c ok"))
    assert client.read() == []  # replies stay in order
    first.callback(Reply.of(250, "2.1.5", "b ok"))
    assert client.read() == ["250 2.1.5 b ok", "250 2.1.5 c ok"]


def test_upstream_replies_mirrored():
    """Upstream refusals per recipient and at the end, and a refused MAIL at every RCPT, reach the client unchanged."""
    upstream = FakeUpstreamType()
    upstream.replies["RCPT bad@example.net"] = Reply.of(550, "5.1.1", "No such user")
    upstream.replies["END"] = Reply.of(554, "5.7.1", "Spam")
    client = Client(upstream)
    client.login()
    lines = client.send(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.net>\r\nRCPT TO:<ok@example.net>\r\nDATA\r\n"
    )
    assert lines[1] == "550 5.1.1 No such user"
    assert lines[2] == "250 2.1.5 Ok"
    assert client.send(b"x\r\n.\r\n")[0].startswith("554 5.7.1 Spam (queue id ")
    assert upstream.delivered == []
    upstream.replies["MAIL"] = Reply.of(550, "5.7.1", "Not from you")
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n")
    assert lines == ["250 2.1.0 Ok", "550 5.7.1 Not from you", "550 5.7.1 Not from you"]


def test_failover_and_reuse():
    """An unreachable first upstream fails over; the next message reuses the session."""
    upstream = FakeUpstreamType()
    upstream.unreachable.add("primary")
    client = Client(upstream)
    relayOne(client)
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(b"x\r\n.\r\n")
    assert len(upstream.delivered) == 2
    assert [s.host for s in upstream.sessions] == ["backup"]


def test_no_upstream():
    """No reachable upstream: every RCPT gets 451 4.4.1, nothing is accepted."""
    upstream = FakeUpstreamType()
    upstream.unreachable.update({"primary", "backup"})
    client = Client(upstream)
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    assert lines == ["250 2.1.0 Ok"] + ["451 4.4.1 No upstream available, try again later"] * 2 + [
        "554 5.5.1 Error: no valid recipients"
    ]


def test_smuggling_refused():
    """A bare LF end marker is not the end; the message is refused and aborted upstream."""
    client = Client()
    lines = relayOne(client, b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.com>\r\n")
    assert lines[-1].startswith("550 5.6.0 Message refused: bare CR or LF")
    assert client.upstream.delivered == []
    assert "ABORT" in client.upstream.sessions[0].calls
    assert "END" not in client.upstream.sessions[0].calls


def test_client_drops_mid_data():
    """A client that disconnects mid-DATA leaves nothing delivered: the upstream is aborted."""
    client = Client()
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(b"Subject: x\r\n\r\npartial")
    client.protocol.connectionLost(None)
    assert client.upstream.sessions[0].calls[-1] == "ABORT"
    assert client.upstream.delivered == []


def test_upstream_backpressure_pauses_client():
    """When the upstream's buffer is full the client is not read."""
    client = Client()
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(b"Subject: x\r\n\r\n")
    producer = client.upstream.sessions[0].producer
    producer.pauseProducing()
    assert client.transport.producerState == "paused"
    producer.resumeProducing()
    assert client.transport.producerState == "producing"


def test_starttls_discards_pipelined_plaintext():
    """CVE-2011-0411: commands sent with STARTTLS are dropped, and state resets."""
    client = Client(tls=object())
    lines = client.send(b"EHLO c\r\n")
    assert "250-STARTTLS" in lines
    assert client.send(b"STARTTLS\r\nAUTH PLAIN " + PLAIN + b"\r\n") == ["220 2.0.0 Ready to start TLS"]
    assert client.transport.tlsStarted is not None
    # Nothing of the plaintext session survives, EHLO included.
    assert client.send(b"MAIL FROM:<a@example.com>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]
    assert "250-STARTTLS" not in client.send(b"EHLO c\r\n")


def test_early_data_refused():
    """Message bytes sent before our 354 are refused and the connection closed."""
    client = Client()
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
    assert lines[-1].startswith("554 5.5.0")
    assert client.transport.disconnecting
    assert client.upstream.delivered == []


def test_line_limits():
    """A command line over 512 octets gets 500 5.5.2; a runaway line closes."""
    client = Client()
    assert client.send(b"NOOP " + b"x" * 510 + b"\r\n") == ["500 5.5.2 Error: line too long"]
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert client.send(b"y" * 20000) == ["421 4.5.2 Error: line too long, closing connection"]
    assert client.transport.disconnecting


def test_idle_timeout():
    """A silent client gets 421 after the idle timeout and is disconnected."""
    client = Client(idleTimeout=300.0)
    client.reactor.advance(299)
    assert client.read() == []
    client.send(b"NOOP\r\n")
    client.reactor.advance(299)
    assert client.read() == []
    client.reactor.advance(2)
    assert client.read() == ["421 4.4.2 Error: timeout exceeded, closing connection"]
    assert client.transport.disconnecting


@pytest.mark.parametrize(
    "command, reply",
    [
        (b"VRFY bob", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
        (b"FOO", "500 5.5.2 Error: command not recognized"),
        (b"RSET", "250 2.0.0 Ok"),
        (b"DATA", "503 5.5.1 Error: need MAIL command"),
        (b"RCPT TO:<b@example.net>", "503 5.5.1 Error: need MAIL command"),
        (b"MAIL FROM:<a@example.com> SIZE=999999999999", "552 5.3.4 Message size exceeds fixed limit"),
        (b"MAIL FROM:<a@example.com> FOO=1", "555 5.5.4 Unsupported parameter FOO"),
        (b"MAIL FROM:a@example.com", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        (b"MAIL FROM:<a@@example.com>", "501 5.1.7 Bad sender address syntax: syntax error in mailbox"),
        (b"QUIT", "221 2.0.0 Bye"),
    ],
)
def test_simple_replies(command, reply):
    """Each command gets its reply with an enhanced status code."""
    client = Client()
    client.login()
    assert client.send(command + b"\r\n") == [reply]


def test_enhanced_codes_after_helo_too():
    """Replies carry enhanced status codes after HELO too, but not the answer to HELO itself."""
    client = Client()
    assert client.send(b"HELO c\r\nNOOP\r\n") == ["250 relay.test", "250 2.0.0 Ok"]
