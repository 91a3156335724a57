"""
Standards conformance and round trips, in memory: the SMTP client holds MAIL
for the first RCPT (PIPELINING), sends BDAT chunks (CHUNKING), passes
SMTPUTF8 and DSN parameters on only where offered, waits the final timeout
for the end of data; the relay answers MAIL and DATA itself, holds the body
until the upstream's 354, gives an upstream's DATA refusal after the dot,
accepts <postmaster>, AUTH after HELO, Salesforce Bounce Management senders,
and turns an upstream's 421 into a 451 for its client.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relay.core.reply import Reply
from relay.policy.senders import SenderDomainPolicy
from relay.seams.policy import PolicyContext
from relay.seams.upstream import UpstreamError
from relay.server.message import MAX_UNREADY
from relay.testing import ACME, FakeUpstreamType, MemoryClient, fakeServerContext
from relay.upstreams.smtpclient import SMTPClientProtocol, SMTPSession
from relay.upstreams.webhook import replyForStatus
from tests.test_smtpclient import result

MESSAGE = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
ORG = "00D000000000062AAA"


def upstream(extensions: dict[str, str], finalTimeout: float = 540.0):
    clock = MemoryReactorClock()
    protocol = SMTPClientProtocol(clock, 30.0)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"220 hi\r\n")
    return SMTPSession(protocol, extensions, finalTimeout=finalTimeout), protocol, transport, clock


# -- round trips to the upstream ------------------------------------------------


def test_mail_held_for_the_first_rcpt():
    """With PIPELINING, MAIL is written with the first RCPT, in one write."""
    session, protocol, transport, _ = upstream({"PIPELINING": ""})
    writes = []
    transport.write = lambda data: writes.append(data)
    mail = session.mailFrom("a@example.com", {})
    assert writes == []
    rcpt = session.rcptTo("b@example.net", {})
    assert writes == [b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"]
    protocol.dataReceived(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert (result(mail).code, result(rcpt).code) == (250, 250)


def test_mail_at_once_without_pipelining():
    """Without PIPELINING, one command at a time: MAIL is written when asked."""
    session, protocol, transport, _ = upstream({})
    session.mailFrom("a@example.com", {})
    assert transport.value().endswith(b"MAIL FROM:<a@example.com>\r\n")


def test_bdat_chunks():
    """
    With CHUNKING: no DATA, a local go-ahead, the body un-stuffed in BDAT
    chunks sent without waiting for their replies, the last BDAT n LAST.
    """
    session, protocol, transport, _ = upstream({"CHUNKING": "", "PIPELINING": ""})
    session.mailFrom("a@example.com", {})
    session.rcptTo("b@example.net", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert result(session.data()).code == 354
    transport.clear()
    session.write(b"Subject: x\r\n\r\n.leading dot\r\n")
    session.write(b"..two\r\n")
    assert transport.value() == b"BDAT 28\r\nSubject: x\r\n\r\n.leading dot\r\n"  # held: it was not the last
    end = session.end()
    assert transport.value().endswith(b"BDAT 7 LAST\r\n..two\r\n")
    protocol.dataReceived(b"250 2.0.0 chunk\r\n250 2.0.0 Ok: queued as X\r\n")
    assert [r.text for r in result(end)] == ["Ok: queued as X"]


def test_bdat_chunk_refused():
    """A refused chunk ends the transaction: later chunks are not sent, its refusal is the final reply."""
    session, protocol, transport, _ = upstream({"CHUNKING": ""})
    session.mailFrom("a@example.com", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n")
    session.rcptTo("b@example.net", {})
    protocol.dataReceived(b"250 2.1.5 Ok\r\n")
    session.data()
    session.write(b"a" * 10)
    session.write(b"b" * 10)  # sends the first chunk
    protocol.dataReceived(b"552 5.3.4 Too much\r\n")
    transport.clear()
    session.write(b"c" * 10)
    end = session.end()
    assert b"BDAT" not in transport.value()
    assert [r.code for r in result(end)] == [552]


def test_final_reply_timeout():
    """The reply to the end of data may take the final timeout (not the reply timeout), then fails with a timeout."""
    session, protocol, transport, clock = upstream({}, finalTimeout=540.0)
    session.mailFrom("a@example.com", {})
    protocol.dataReceived(b"250 2.1.0 Ok\r\n")
    session.rcptTo("b@example.net", {})
    protocol.dataReceived(b"250 2.1.5 Ok\r\n")
    session.data()
    protocol.dataReceived(b"354 go\r\n")
    end = session.end()
    clock.advance(539)
    assert result(end) is None
    clock.advance(2)
    assert result(end).value.kind == "timeout"


# -- SMTPUTF8 and DSN -------------------------------------------------------------


def test_smtputf8_passed_on_or_refused():
    """SMTPUTF8 goes to an upstream that offers it; towards one without, 553 5.6.7 and nothing is sent."""
    session, protocol, transport, _ = upstream({"SMTPUTF8": ""})
    session.mailFrom("jösé@bücher.example", {"SMTPUTF8": None})
    assert transport.value().endswith("MAIL FROM:<jösé@bücher.example> SMTPUTF8\r\n".encode())
    session, protocol, transport, _ = upstream({})
    before = transport.value()
    reply = result(session.mailFrom("jösé@bücher.example", {"SMTPUTF8": None}))
    assert (reply.code, reply.enhanced) == (553, "5.6.7")
    assert result(session.rcptTo("b@example.net", {})).code == 553
    assert transport.value() == before


def test_dsn_passed_on_or_dropped():
    """RET, ENVID, NOTIFY and ORCPT go unchanged to an upstream offering DSN, and are dropped otherwise."""
    dsn = {"RET": "HDRS", "ENVID": "QQ314159"}
    rcpt = {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;b@example.net"}
    session, protocol, transport, _ = upstream({"DSN": ""})
    session.mailFrom("a@example.com", dsn)
    session.rcptTo("b@example.net", rcpt)
    assert transport.value().endswith(
        b"MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net\r\n"
    )
    session, protocol, transport, _ = upstream({})
    session.mailFrom("a@example.com", dsn)
    session.rcptTo("b@example.net", rcpt)
    assert transport.value().endswith(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")


class Seen:
    """A policy that records the recipients and parameters it is shown."""

    def __init__(self) -> None:
        self.recipients: list = []
        self.parameters: list = []

    def __call__(self, context):
        from relay.plugin import CONTINUE, Policy

        seen = self

        class Recorder(Policy):
            def mailFrom(self, client, transaction):
                seen.parameters.append(dict(transaction.parameters))
                return CONTINUE

            def rcptTo(self, client, transaction, recipient):
                seen.recipients.append(recipient)
                return CONTINUE

        return Recorder(context)


def test_relay_takes_utf8_and_dsn():
    """EHLO offers SMTPUTF8 and DSN; policies see the parameters; a UTF-8 address needs SMTPUTF8 (553 5.6.7)."""
    seen = Seen()
    reactor = MemoryReactorClock()
    kind = FakeUpstreamType()
    policy = seen(PolicyContext(reactor=reactor, options={}))
    client = MemoryClient(kind, context=fakeServerContext(reactor, kind, policies={"seen": policy}))
    client.login()
    assert client.send("MAIL FROM:<jö@example.com>\r\n".encode()) == [
        "553 5.6.7 Non-ASCII addresses need SMTPUTF8 (RFC 6531)"
    ]
    lines = client.send(
        "MAIL FROM:<a@example.com> SMTPUTF8 RET=FULL ENVID=X1\r\n"
        "RCPT TO:<jösé@bücher.example> NOTIFY=NEVER ORCPT=utf-8;j+C3+B6s+C3+A9@b+C3+BCcher.example\r\n".encode()
    )
    assert lines == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert seen.parameters == [{"SMTPUTF8": None, "RET": "FULL", "ENVID": "X1"}]
    [recipient] = seen.recipients
    assert str(recipient) == "jösé@bücher.example" and recipient.parameters["NOTIFY"] == "NEVER"
    assert client.send(b"RCPT TO:<c@example.net> NOTIFY=SOMETIMES\r\n")[0].startswith("501 5.5.4 NOTIFY must be")


def test_postmaster_accepted():
    """RCPT TO:<postmaster> without a domain is accepted and relayed (RFC 5321 §4.5.1)."""
    client = MemoryClient()
    client.login()
    lines = client.relay("a@example.com", ["Postmaster"], MESSAGE)
    assert lines[1] == "250 2.1.5 Ok" and lines[-1].startswith("250 2.0.0")
    [message] = client.upstream.delivered
    assert message.recipients == ["Postmaster"]


def test_auth_after_helo():
    """AUTH after HELO is accepted, as Postfix does."""
    client = MemoryClient()
    from base64 import b64encode

    lines = client.send(b"HELO c\r\nAUTH PLAIN " + b64encode(b"\0alice\0secret") + b"\r\n")
    assert lines[-1].startswith("235 2.7.0")


def bounceClient(**tenant) -> MemoryClient:
    reactor = MemoryReactorClock()
    kind = FakeUpstreamType()
    context = PolicyContext(reactor=reactor, options={})
    policies = {"sender-domain": SenderDomainPolicy(context)}
    server = fakeServerContext(reactor, kind, policies=policies, tenant=replace(ACME, **tenant))
    client = MemoryClient(kind, context=server)
    client.login()
    return client


BOUNCE_SENDER = "bounce+abc.00D000000000062@bnc.salesforce.com"


@pytest.mark.parametrize(
    "orgId, mark, expected",
    [
        (ORG, "00D000000000062", "250 "),
        (ORG, "00D000000000999", "550 5.7.1 Bounce Management sender: X-SFDC-LK does not match"),
        (None, "00D000000000062", "550 5.7.1 Sender domain not allowed"),
    ],
    ids=["matching-org", "other-org", "no-org-id"],
)
def test_salesforce_bounce_management(orgId, mark, expected):
    """An envelope sender under bnc.salesforce.com passes for a tenant with an org id when From and X-SFDC-LK match."""
    client = bounceClient(orgId=orgId)
    message = f"From: a@example.com\r\nX-SFDC-LK: {mark}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    lines = client.relay(BOUNCE_SENDER, ["b@example.net"], message)
    assert any(line.startswith(expected) for line in lines), lines


def test_bounce_management_still_needs_a_tenant_from():
    """A Bounce Management sender does not lift the From: check."""
    client = bounceClient(orgId=ORG)
    message = b"From: ceo@elsewhere.example\r\nX-SFDC-LK: 00D000000000062\r\n\r\nbody\r\n"
    assert client.relay(BOUNCE_SENDER, ["b@example.net"], message)[-1].startswith("550 5.7.1 From header")


# -- the relay's side of DATA -------------------------------------------------------


def heldAtData() -> tuple[FakeUpstreamType, MemoryClient]:
    """A logged-in client whose upstream holds its reply to DATA."""
    kind = FakeUpstreamType()
    kind.hold.add("DATA")
    client = MemoryClient(kind)
    client.login()
    return kind, client


def test_our_354_at_once_body_held_until_the_upstream_is_ready():
    """The client gets our 354 at once; the body waits for the upstream's 354, then streams."""
    kind, client = heldAtData()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert lines[-1].startswith("354 ")
    session = kind.sessions[0]
    assert client.send(MESSAGE) == [] and session.written == b""
    session.held["DATA"].callback(Reply.of(354, None, "go"))
    assert session.written.endswith(MESSAGE[:-2])  # the last CRLF waits: it may start the end marker
    assert client.send(b".\r\n")[0].startswith("250 2.0.0")


def test_body_held_within_a_bound():
    """While the upstream has not said 354, at most a bounded amount of the body is held: the client is paused."""
    kind, client = heldAtData()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(MESSAGE + (b"x" * 998 + b"\r\n") * (MAX_UNREADY // 1000 + 2))
    assert client.transport.producerState == "paused"
    kind.sessions[0].held["DATA"].callback(Reply.of(354, None, "go"))
    assert client.transport.producerState == "producing"


def test_data_refused_after_the_dot():
    """An upstream refusing DATA: our 354 stood, the refusal comes after the dot, and the session is reused."""
    kind, client = heldAtData()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(MESSAGE)
    kind.sessions[0].held["DATA"].callback(Reply.of(554, "5.3.0", "No"))
    assert client.send(b".\r\n")[0].startswith("554 5.3.0 No (queue id ")
    kind.hold.clear()
    assert client.relay("a@example.com", ["b@example.net"], MESSAGE)[-1].startswith("250 ")
    assert len(kind.sessions) == 1


def test_final_timeout_outcome_unknown():
    """No final reply in time: 451 4.4.7, the outcome unknown; the session is not reused."""
    kind = FakeUpstreamType()
    kind.hold.add("END")
    client = MemoryClient(kind)
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(MESSAGE + b".\r\n")
    kind.sessions[0].held["END"].errback(UpstreamError("timeout", "no reply within 540s"))
    [line] = client.read()
    assert line.startswith("451 4.4.7 The upstream did not answer the end of data in time: ")


def test_upstream_421_is_not_the_clients():
    """An upstream's 421 ends the upstream connection, not the client's session: the client gets a 451."""
    kind = FakeUpstreamType()
    kind.replies["RCPT"] = Reply.of(421, "4.7.0", "Going away")
    client = MemoryClient(kind)
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n")
    assert lines == ["250 2.1.0 Ok", "451 4.7.0 Going away", "250 2.0.0 Ok"]
    assert not client.transport.disconnecting
    client.send(b"RSET\r\n")
    assert kind.sessions[0].calls[-1] == "ABORT"


def test_retry_after_passed_on():
    """A webhook's Retry-After is in the text of the temporary failure."""
    reply = replyForStatus(429, "Too Many Requests", "120")
    assert (reply.code, reply.text) == (
        451,
        "Not delivered, try again: webhook answered HTTP 429 Too Many Requests (Retry-After: 120)",
    )
