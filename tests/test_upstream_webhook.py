"""
The webhook upstream type: in memory (a fake Agent and a Clock) for flow
control, timeouts and cancellation; end to end through a running relay into
a real twisted.web hook on loopback (tests/support/webhookserver.py).
"""

from __future__ import annotations

import base64
import socket
import time
from dataclasses import dataclass, field

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyClass

from relay.core.reply import Reply
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamType
from relay.seams.upstream import UpstreamContext
from relay.upstreams.webhook import WebhookSession, WebhookUpstreamType, replyForStatus
from tests.support.relay import splitTrace
from tests.support.webhook import WebhookServer
from tests.test_relay_e2e import MESSAGE

TIMEOUT = 5.0  # the URL's ?timeout=
FINAL = 50.0  # --upstream-final-timeout


def result(d: Deferred):
    """What a Deferred has fired with (a L{Failure} when it failed)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


@dataclass
class Posted:
    uri: bytes
    headers: object
    body: object
    deferred: Deferred
    cancelled: bool = False


class FakeAgent:
    """Records each request; the test answers or fails its Deferred."""

    def __init__(self) -> None:
        self.posts: list[Posted] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        assert method == b"POST"

        def cancel(d):
            posted.cancelled = True

        posted = Posted(uri, headers, bodyProducer, Deferred(cancel))
        self.posts.append(posted)
        return posted.deferred


@dataclass
class Response:
    code: int
    phrase: bytes = b"Whatever"
    headers: Headers = field(default_factory=Headers)

    def deliverBody(self, protocol) -> None:
        protocol.makeConnection(None)


@dataclass
class Producer:
    """The relay's producer (the client): counts pauses."""

    paused: bool = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = False


@dataclass
class Consumer:
    """The request's chunked encoder, as the body producer sees it."""

    data: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.data.append(data)


def transaction(url: str = "https://u:p%20w@hooks.example.com/mail?timeout=5&verify=no"):
    """A session with MAIL, two RCPTs and DATA done; the fake agent and clock it uses."""
    clock, agent = Clock(), FakeAgent()
    context = UpstreamContext(reactor=clock, hostname="relay.test", threadPool=None, timeout=30.0, finalTimeout=FINAL)
    session = WebhookSession(agent, UpstreamURL.parse(url), context)
    assert result(session.mailFrom("", {})).code == 250
    assert result(session.rcptTo("b@example.net", {})).code == 250
    assert result(session.rcptTo("c@example.net", {})).code == 250
    assert result(session.data()).code == 354
    return session, agent, clock


def connect(session: WebhookSession, agent: FakeAgent) -> tuple[Producer, Consumer, Deferred]:
    """Register the client's producer and let the agent start the body."""
    producer, consumer = Producer(), Consumer()
    session.registerProducer(producer, True)
    body = agent.posts[-1].body.startProducing(consumer)
    return producer, consumer, body


def test_provides_interfaces():
    """The webhook type and its sessions provide the plugin interfaces."""
    verifyClass(IUpstreamType, WebhookUpstreamType)
    verifyClass(IUpstreamSession, WebhookSession)


def test_request_carries_the_envelope():
    """The POST goes to the URL without credentials or options, with the envelope and basic auth in headers."""
    session, agent, _ = transaction()
    [posted] = agent.posts
    assert posted.uri == b"https://hooks.example.com/mail"
    assert posted.headers.getRawHeaders(b"Content-Type") == [b"message/rfc822"]
    assert posted.headers.getRawHeaders(b"X-Smtprelay-Mail-From") == [b"<>"]
    assert posted.headers.getRawHeaders(b"X-Smtprelay-Rcpt-To") == [b"<b@example.net>", b"<c@example.net>"]
    assert posted.headers.getRawHeaders(b"Authorization") == [b"Basic " + base64.b64encode(b"u:p w")]
    assert posted.body.length is not None and not isinstance(posted.body.length, int)  # UNKNOWN_LENGTH: chunked


def test_client_paused_until_connected():
    """Writes before the connection is up are kept and the client paused; once connected they go out in order."""
    session, agent, _ = transaction()
    producer = Producer()
    session.registerProducer(producer, True)
    assert producer.paused
    session.write(b"Subject: a\r\n")
    session.write(b"\r\nbody\r\n")
    consumer = Consumer()
    agent.posts[0].body.startProducing(consumer)
    assert b"".join(consumer.data) == b"Subject: a\r\n\r\nbody\r\n"
    assert not producer.paused
    session.write(b"more\r\n")
    assert consumer.data[-1] == b"more\r\n"


def test_backpressure_pauses_client():
    """When the connection pauses the body, the client is paused; resuming resumes it; no timeout meanwhile."""
    session, agent, clock = transaction()
    producer, _, _ = connect(session, agent)
    body = agent.posts[0].body
    body.pauseProducing()
    assert producer.paused
    body.resumeProducing()
    assert not producer.paused
    clock.advance(10 * TIMEOUT)  # waiting for the client is not waiting for the hook
    assert session.alive and not agent.posts[0].cancelled


def test_stalled_body_times_out():
    """A connection that stays paused past the timeout: request cancelled, client released, end fails."""
    session, agent, clock = transaction()
    producer, _, _ = connect(session, agent)
    agent.posts[0].body.pauseProducing()
    clock.advance(TIMEOUT)
    assert agent.posts[0].cancelled and not session.alive and not producer.paused
    failure = result(session.end())
    assert isinstance(failure, Failure) and failure.value.kind == "stall"  # not delivered: the body never ended


def test_end_completes_the_body_and_maps_the_answer():
    """end() ends the chunked body; the hook's 2xx becomes 250 with the status in the text."""
    session, agent, _ = transaction()
    _, _, body = connect(session, agent)
    session.unregisterProducer()
    d = session.end()
    assert body.called and not d.called
    agent.posts[0].deferred.callback(Response(202, b"Accepted"))
    assert result(d) == [Reply.of(250, "2.0.0", "Ok: webhook answered HTTP 202 Accepted")]


def test_answer_timeout():
    """
    No answer within the final timeout after the end (not the URL's
    timeout: the hook has the message): the request is cancelled and end
    fails with a timeout, the outcome unknown.
    """
    session, agent, clock = transaction()
    connect(session, agent)
    d = session.end()
    clock.advance(FINAL - 0.1)
    assert not d.called
    clock.advance(0.2)
    assert agent.posts[0].cancelled
    assert result(d).value.kind == "timeout"


def test_abort_cancels_before_the_body_ends():
    """abort() cancels the request and never completes the body."""
    session, agent, _ = transaction()
    _, _, body = connect(session, agent)
    session.write(b"Subject: partial\r\n")
    session.abort()
    assert agent.posts[0].cancelled and not body.called and not session.alive


def test_connection_refused():
    """A hook that cannot be reached: the session dies and end fails with kind connect."""
    session, agent, _ = transaction()
    session.registerProducer(Producer(), True)
    agent.posts[0].deferred.errback(ConnectionRefusedError())
    assert not session.alive
    assert result(session.end()).value.kind == "connect"


def test_session_reused_for_next_transaction():
    """After a transaction and reset, the next DATA makes a new POST with the new envelope."""
    session, agent, _ = transaction()
    connect(session, agent)
    d = session.end()
    agent.posts[0].deferred.callback(Response(200, b"OK"))
    assert result(d)[0].code == 250
    assert result(session.reset()) is None and session.alive
    session.mailFrom("a@example.com", {})
    session.rcptTo("d@example.net", {})
    session.data()
    assert len(agent.posts) == 2
    assert agent.posts[1].headers.getRawHeaders(b"X-Smtprelay-Rcpt-To") == [b"<d@example.net>"]


@pytest.mark.parametrize(
    "status, code, enhanced",
    [
        (200, 250, "2.0.0"),
        (204, 250, "2.0.0"),
        (400, 554, "5.6.0"),
        (403, 554, "5.6.0"),
        (413, 552, "5.3.4"),
        (401, 451, "4.4.0"),
        (429, 451, "4.4.0"),
        (500, 451, "4.4.0"),
        (503, 451, "4.4.0"),
        (302, 451, "4.4.0"),
    ],
)
def test_status_mapping(status, code, enhanced):
    """HTTP statuses map to SMTP replies: 2xx accepted, 4xx permanent (but 401/408/429), the rest temporary."""
    reply = replyForStatus(status, "Phrase")
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert f"HTTP {status} Phrase" in reply.text


@pytest.mark.parametrize(
    "url, problem",
    [
        ("https:///mail", "needs a host"),
        ("http://u:p@hooks.example.com/", "only sent over https"),
        ("http://hooks.example.com/?verify=no", "https:// only"),
        ("https://hooks.example.com/?token=secret", "unknown option 'token'"),
        ("https://hooks.example.com/?timeout=0", "timeout must be a positive"),
        ("https://hooks.example.com/?verify=maybe", "verify must be yes or no"),
        ("https://hooks.example.com/?ca=/nonexistent/ca.pem", "not found"),
        ("ftp://hooks.example.com/", "not a webhook URL"),
    ],
)
def test_bad_urls(url, problem):
    """Bad webhook URLs are refused with a reason."""
    with pytest.raises(ValueError, match=problem):
        WebhookUpstreamType().validate(UpstreamURL.parse(url))


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/mail", "http://127.0.0.1:8080/", "https://u:p@h.example/x?timeout=5&verify=no"]
)
def test_good_urls(url):
    """Well-formed webhook URLs pass validation."""
    WebhookUpstreamType().validate(UpstreamURL.parse(url))


# -- end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hook(tmp_path_factory):
    """A plain-HTTP recording hook for this module."""
    server = WebhookServer(tmp_path_factory.mktemp("hook"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hookTLS(ca, tmp_path_factory):
    """An HTTPS recording hook with a certificate from the test CA."""
    directory = tmp_path_factory.mktemp("hooktls")
    server = WebhookServer(directory / "records", cert=ca.issue(directory, "webhook"))
    yield server
    server.stop()


def send(relay, account, recipients=("b@example.net", "c@example.net")) -> tuple[int, bytes]:
    """One message through the relay: the reply to the final dot."""
    with relay.connect(account) as client:
        assert client.mail("a@example.com")[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        return client.data(MESSAGE)


def test_webhook_delivers(relay, hook, tenantName):
    """2xx: the client gets 250 and the hook a chunked POST of the exact message with the envelope in headers."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/200"))
    code, text = send(relay, account)
    assert code == 250 and text.startswith(b"2.0.0 Ok: webhook answered HTTP 200 OK (queue id ")
    [request] = hook.waitForRequests(f"/{tenantName}/", 1)
    assert request.method == "POST" and request.answered == 200 and request.bodyComplete
    assert request.header("Transfer-Encoding") == ["chunked"]
    assert request.header("Content-Type") == ["message/rfc822"]
    assert request.header("X-Smtprelay-Mail-From") == ["<a@example.com>"]
    assert request.header("X-Smtprelay-Rcpt-To") == ["<b@example.net>", "<c@example.net>"]
    assert request.header("Authorization") == []
    trace, rest = splitTrace(request.body)
    assert rest == MESSAGE and b"by relay.test (smtprelay)" in trace


def test_webhook_large_message_streams(relay, hook, tenantName):
    """An 8 MB message streams through in many chunks and arrives whole."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/200"))
    message = MESSAGE + (b"y" * 998 + b"\r\n") * 8000
    with relay.connect(account) as client:
        assert client.sendmail("a@example.com", ["b@example.net"], message) == {}
    [request] = hook.waitForRequests(f"/{tenantName}/", 1)
    assert splitTrace(request.body)[1] == message


def test_webhook_two_messages_one_session(relay, hook, tenantName):
    """Two messages in one SMTP session are two POSTs, each with its own envelope."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/200"))
    with relay.connect(account) as client:
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        assert client.sendmail("z@example.com", ["c@example.net"], MESSAGE) == {}
    first, second = hook.waitForRequests(f"/{tenantName}/", 2)
    assert first.header("X-Smtprelay-Mail-From") == ["<a@example.com>"]
    assert second.header("X-Smtprelay-Rcpt-To") == ["<c@example.net>"]


def test_webhook_4xx_is_permanent(relay, hook, tenantName):
    """A 4xx answer from the hook: the client gets 554 5.6.0 naming the status."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/422"))
    code, text = send(relay, account)
    assert code == 554 and text.startswith(b"5.6.0 Message refused: webhook answered HTTP 422 ")


def test_webhook_5xx_is_temporary(relay, hook, tenantName):
    """A 5xx answer from the hook: the client gets 451 4.4.0 naming the status."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/503"))
    code, text = send(relay, account)
    assert code == 451 and b"webhook answered HTTP 503 Service Unavailable" in text


def test_webhook_stall_times_out(relay, hook, tenantName):
    """
    A hook that takes the message but never answers: after
    --upstream-final-timeout the client gets 451 4.4.7 (the outcome is
    unknown), and the hook sees the connection closed unanswered.
    """
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/stall", timeout="1"))
    started = time.monotonic()
    code, text = send(relay, account)
    assert time.monotonic() - started < 15
    assert code == 451 and text.startswith(b"4.4.7 The upstream did not answer the end of data in time")
    [request] = hook.waitForRequests(f"/{tenantName}/", 1)
    assert request.answered is None


def test_webhook_client_drops_mid_data(relay, hook, tenantName):
    """A client that disconnects mid-DATA: the POST is cut before its end, the hook never gets a complete body."""
    account = relay.addTenant(tenantName, hook.url(f"/{tenantName}/200"))
    client = relay.connect(account)
    client.mail("a@example.com")
    client.rcpt("b@example.net")
    assert client.docmd("DATA")[0] == 354
    client.send(b"From: a@example.com\r\nSubject: partial\r\n\r\n" + (b"x" * 78 + b"\r\n") * 1000)
    hook.waitForBodyStarted(f"/{tenantName}/")
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    [request] = hook.waitForRequests(f"/{tenantName}/", 1)
    assert not request.bodyComplete and request.answered is None
    assert request.body.startswith(b"Received: ")


def test_webhook_https_with_ca_and_basic_auth(relay, hookTLS, tenantName):
    """https with ?ca= and user:pass@: delivered, with basic auth, and the password never logged."""
    url = hookTLS.url(f"/{tenantName}/200", "hook-user:hook-s3cret@", ca=str(relay.ca.cert))
    account = relay.addTenant(tenantName, url)
    assert send(relay, account)[0] == 250
    [request] = hookTLS.waitForRequests(f"/{tenantName}/", 1)
    assert request.header("Authorization") == ["Basic " + base64.b64encode(b"hook-user:hook-s3cret").decode()]
    assert splitTrace(request.body)[1] == MESSAGE
    assert "hook-s3cret" not in relay.log()


def test_webhook_https_verified_by_default(relay, hookTLS, tenantName):
    """
    Without ?ca= the test CA is not trusted: the hook is not used (451 4.4.1
    at RCPT, as for an unreachable one) and sees no request; ?verify=no
    accepts the certificate.
    """
    refused = relay.addTenant(tenantName + "a", hookTLS.url(f"/{tenantName}a/200"))
    with relay.connect(refused) as client:
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.net")[0] == 451
    assert hookTLS.requests(f"/{tenantName}a/") == []
    unverified = relay.addTenant(tenantName + "b", hookTLS.url(f"/{tenantName}b/200", verify="no"))
    assert send(relay, unverified)[0] == 250
