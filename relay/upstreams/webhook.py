"""
The C{https} and C{http} upstream type: each message is POSTed to a web
hook, streamed while it arrives.

URL forms::

    https://[user:password@]host[:port]/path[?timeout=S&verify=no&ca=PATH]
    http://host[:port]/path[?timeout=S]

The certificate is verified against the platform's trust roots (or the PEM
file of C{ca=}) unless C{verify=no}.  C{user:password@} is sent as HTTP
basic authentication, over https only; it is encrypted at rest like every
upstream password and never logged.  Other query options are refused rather
than passed on to the hook: a secret in a query string would be stored and
logged in clear.

The request::

    POST /path HTTP/1.1
    Content-Type: message/rfc822
    Transfer-Encoding: chunked
    X-Smtprelay-Mail-From: <sender@example.com>      (<> for the null sender)
    X-Smtprelay-Rcpt-To: <first@example.net>         (one field per recipient,
    X-Smtprelay-Rcpt-To: <second@example.net>         in RCPT order)
    Authorization: Basic ...                         (with credentials)

    the message exactly as the relay forwards it: its trace field, then the
    client's message, CRLF line ends, not dot-stuffed

A session is opened once the hook's host was reached (TCP, and TLS with
its certificate verified), so a dead hook fails over to the tenant's next
upstream like a dead SMTP server.  MAIL, RCPT and DATA are answered here
(250, 250, 354); the POST starts at DATA and its body is fed as the relay
writes, paused whenever the connection cannot take more.  The relay's reply
to the final dot comes from the hook's status:

    ====================================  =============================
    2xx                                   250 2.0.0
    413                                   552 5.3.4
    401, 408, 429                         451 4.4.0 (ours or its state,
                                          not the message's fault)
    other 4xx                             554 5.6.0
    anything else (5xx, 3xx: redirects    451 4.4.0
    are not followed)
    no connection, connection lost,       451 4.4.2 (the relay's reply
    a hook that stops taking the body     to a broken upstream)
    no answer to the whole body within    451 4.4.7 (the outcome is
    --upstream-final-timeout              unknown)
    ====================================  =============================

The HTTP status and reason are in the reply text, with the hook's
C{Retry-After} when it gave one.  C{timeout} bounds every wait for the hook
but the last: to connect, to take more of the body; the answer after the
end of the message may take the final timeout.  A message aborted by the
relay (policy refusal, client gone) cancels the request: the connection is
closed before the terminating chunk, so the hook never sees a complete
body.  As with SMTP, a hook that took the whole body but whose answer is
lost or late gets a 451 and may see the message again (RFC 1047).

Each session carries one POST at a time; connections are kept alive
between POSTs in a pool per hook and trust settings (persistent HTTP/1.1),
closed after a few idle seconds so that we, not the server, close an idle
connection: a POST never races a server's keep-alive timeout.
"""

from __future__ import annotations

import enum
from base64 import b64encode
from dataclasses import replace
from typing import cast

from OpenSSL.SSL import Error as TLSError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHandshakeListener,
    IProducer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.smtp import clientTLSOptions, replyTimeout, validateOptions

__all__ = ["PostState", "WebhookSession", "WebhookUpstreamType", "replyForStatus"]

OPTIONS = frozenset({"timeout", "verify", "ca"})
TEMPORARY_4XX = frozenset({401, 408, 429})  # our credentials, its timeout, its rate limit
IDLE_CONNECTIONS = 10  # per hook: enough for a busy tenant's concurrent messages
IDLE_SECONDS = 4  # below common keep-alive timeouts (Node.js, Apache: 5 s)
CONTENT_TYPE = b"message/rfc822"
MAIL_OK = Reply.of(250, "2.1.0", "Ok")
RCPT_OK = Reply.of(250, "2.1.5", "Ok")
GO_AHEAD = Reply.of(354, None, "Go ahead")


def replyForStatus(code: int, phrase: str, retryAfter: str | None = None) -> Reply:
    """
    The SMTP reply for the hook's answer (see the table above).

    @param code: the HTTP status code.
    @param phrase: its reason phrase.
    @param retryAfter: its C{Retry-After} header, passed on in the text of
        a temporary failure (the client's retry schedule may use it).
    """
    status = f"webhook answered HTTP {code} {phrase}".rstrip()
    if retryAfter and not (200 <= code < 300):
        status += f" (Retry-After: {retryAfter.strip()[:64]})"
    if 200 <= code < 300:
        return Reply.of(250, "2.0.0", f"Ok: {status}")
    if code == 413:
        return Reply.of(552, "5.3.4", f"Message too big: {status}")
    if 400 <= code < 500 and code not in TEMPORARY_4XX:
        return Reply.of(554, "5.6.0", f"Message refused: {status}")
    return Reply.of(451, "4.4.0", f"Not delivered, try again: {status}")


def _error(failure: Failure) -> UpstreamError:
    """An L{UpstreamError} for a failed request, named by its innermost cause."""
    while getattr(failure.value, "reasons", None):  # Agent's ResponseFailed and kin wrap the causes
        failure = failure.value.reasons[0]
    kind = "connect" if failure.check(ConnectError) else "tls" if failure.check(TLSError) else "lost"
    return UpstreamError(kind, f"webhook request failed: {failure.getErrorMessage()}")


class PostState(enum.Enum):
    """Where one POST is; see L{_TRANSITIONS}."""

    CONNECTING = "connecting"  # the request is sent; the body has no connection yet
    CONNECTING_ENDED = "connecting, body complete"  # the whole message came before the connection
    STREAMING = "streaming"  # the body flows as the relay writes
    PAUSED = "paused"  # the connection cannot take more: the client is paused
    ANSWERING = "waiting for the answer"  # the body is complete, the hook has not answered
    STOPPED = "stopped"  # the connection is going away: writes are dropped, the request's outcome will tell why
    DONE = "done"  # the hook answered, or the request failed or was cancelled


# What may follow what; anything else is a bug and raises.  DONE is final:
# events that come after it (a late pause, a late answer) change nothing.
_TRANSITIONS: dict[PostState, frozenset[PostState]] = {
    PostState.CONNECTING: frozenset({PostState.STREAMING, PostState.CONNECTING_ENDED, PostState.DONE}),
    PostState.CONNECTING_ENDED: frozenset({PostState.ANSWERING, PostState.DONE}),
    PostState.STREAMING: frozenset({PostState.PAUSED, PostState.ANSWERING, PostState.STOPPED, PostState.DONE}),
    PostState.PAUSED: frozenset({PostState.STREAMING, PostState.ANSWERING, PostState.STOPPED, PostState.DONE}),
    PostState.ANSWERING: frozenset({PostState.STOPPED, PostState.DONE}),
    PostState.STOPPED: frozenset({PostState.DONE}),
    PostState.DONE: frozenset(),
}
# The client is paused in these states, and the timer runs in these too.
_HOLDING = frozenset({PostState.CONNECTING, PostState.PAUSED})
_TIMED = frozenset(
    {PostState.CONNECTING, PostState.CONNECTING_ENDED, PostState.PAUSED, PostState.ANSWERING, PostState.STOPPED}
)


class IllegalTransition(RuntimeError):
    """A state machine was asked for a transition its table does not have: a bug."""


@implementer(IBodyProducer)
class _Post:
    """
    One message on its way to the hook: a chunked POST whose body producer
    is fed by the relay's writes, as an explicit state machine
    (L{PostState}, L{_TRANSITIONS}).

    While the hook is not connected yet, or its connection asks us to pause,
    the relay's producer (the client) is paused and a timer runs; writes made
    before the connection are kept until it is up (a bounded amount: the
    client is paused).  The timer also runs while the answer is awaited.

    @ivar reply: the reply for the hook's answer, once it came.
    @ivar error: why the request failed, once it did.
    """

    length = UNKNOWN_LENGTH

    def __init__(
        self, agent: IAgent, uri: bytes, headers: Headers, clock: IReactorTime, timeout: float, finalTimeout: float
    ):
        self._clock = clock
        self._timeout = timeout
        self._finalTimeout = finalTimeout
        self.state = PostState.CONNECTING
        self._producer: IPushProducer | None = None
        self._holding = False
        self._consumer: IConsumer | None = None
        self._pending: list[bytes] = []
        self._body: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._waiter: Deferred[list[Reply]] | None = None
        self.reply: Reply | None = None
        self.error: UpstreamError | None = None
        self._request = agent.request(b"POST", uri, headers, self)
        self._request.addCallbacks(self._answered, lambda failure: self._settle(_error(failure)))
        self._update()

    def _enter(self, state: PostState) -> None:
        if state is not self.state:
            if state not in _TRANSITIONS[self.state]:
                raise IllegalTransition(f"webhook POST: {self.state.value} -> {state.value}")
            self.state = state
            if state is PostState.ANSWERING and self._timer is not None:  # the final answer gets its own time
                self._timer.cancel()
                self._timer = None
        self._update()

    @property
    def done(self) -> bool:
        return self.state is PostState.DONE

    # -- from the relay ---------------------------------------------------

    def registerProducer(self, producer: IPushProducer) -> None:
        self._producer = producer
        self._update()

    def unregisterProducer(self) -> None:
        producer, self._producer = self._producer, None
        if self._holding and producer is not None:
            self._holding = False
            producer.resumeProducing()

    def write(self, data: bytes) -> None:
        if self.state in (PostState.CONNECTING, PostState.CONNECTING_ENDED):
            self._pending.append(data)
        elif self._consumer is not None and self.state in (PostState.STREAMING, PostState.PAUSED):
            self._consumer.write(data)

    def finish(self) -> Deferred[list[Reply]]:
        """
        The whole message was written: end the body.

        @return: a Deferred firing with the reply for the hook's answer, or
            failing with L{UpstreamError}.
        """
        if self.state is PostState.CONNECTING:
            self._enter(PostState.CONNECTING_ENDED)
        elif self._body is not None and self.state in (PostState.STREAMING, PostState.PAUSED):
            self._enter(PostState.ANSWERING)
            self._body.callback(None)
        if self.reply is not None:
            return succeed([self.reply])
        if self.error is not None:
            return fail(self.error)
        self._waiter = Deferred()
        return self._waiter

    def cancel(self, error: UpstreamError) -> None:
        """Give up: close the connection before the body is complete."""
        if not self.done:
            self._settle(error)
            self._request.cancel()

    # -- from the Agent's connection --------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        pending, self._pending = b"".join(self._pending), []
        if pending:
            consumer.write(pending)
        self._body = Deferred()
        if self.state is PostState.CONNECTING_ENDED:
            self._enter(PostState.ANSWERING)
            self._body.callback(None)
        elif self.state is PostState.CONNECTING:
            self._enter(PostState.STREAMING)
        return self._body

    def pauseProducing(self) -> None:
        if self.state is PostState.STREAMING:
            self._enter(PostState.PAUSED)

    def resumeProducing(self) -> None:
        if self.state is PostState.PAUSED:
            self._enter(PostState.STREAMING)

    def stopProducing(self) -> None:
        """The connection is going away; the request's outcome tells why."""
        if self.state in (PostState.STREAMING, PostState.PAUSED, PostState.ANSWERING):
            self._enter(PostState.STOPPED)

    # -- outcome ----------------------------------------------------------

    def _answered(self, response: IResponse) -> None:
        response.deliverBody(Protocol())  # read and drop, so the connection can be reused
        retryAfter = (response.headers.getRawHeaders(b"retry-after") or [b""])[0].decode("ascii", "replace")
        self._settle(replyForStatus(response.code, response.phrase.decode("ascii", "replace"), retryAfter or None))

    def _settle(self, outcome: Reply | UpstreamError) -> None:
        """The first outcome wins: keep it and tell L{finish}'s caller."""
        if self.done:
            return
        if isinstance(outcome, Reply):
            self.reply = outcome
        else:
            self.error = outcome
        self._enter(PostState.DONE)
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if self.reply is not None:
            waiter.callback([self.reply])
        else:
            waiter.errback(self.error)

    def _update(self) -> None:
        """
        Pause the relay while the hook cannot take more; run the timer while
        we wait for the hook (to connect, to take more, to answer).
        """
        holding = self.state in _HOLDING
        if self._producer is not None and holding != self._holding:
            self._holding = holding
            (self._producer.pauseProducing if holding else self._producer.resumeProducing)()
        timed = self.state in _TIMED
        if timed and self._timer is None:
            timeout = self._finalTimeout if self.state is PostState.ANSWERING else self._timeout
            self._timer = self._clock.callLater(timeout, self._timedOut)
        elif not timed and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        if self.state is PostState.ANSWERING:  # it has the whole message: the outcome is unknown
            self.cancel(UpstreamError("timeout", f"webhook gave no answer within {self._finalTimeout:g}s"))
        else:  # it stopped taking the message: not delivered
            self.cancel(UpstreamError("stall", f"webhook did not take the message for {self._timeout:g}s"))


@implementer(IUpstreamSession)
class WebhookSession:
    """
    Transactions POSTed to one hook, one at a time.  Nothing is connected
    until DATA; the connection comes from the type's pool.
    """

    def __init__(self, agent: IAgent, url: UpstreamURL, context: UpstreamContext):
        self._agent = agent
        self._uri = replace(url, username=None, password=None, options={}).unparse().encode("ascii")
        self._authorization = None
        if url.username is not None:
            self._authorization = b"Basic " + b64encode(f"{url.username}:{url.password or ''}".encode())
        self._clock = context.reactor
        self._timeout = replyTimeout(url, context)
        self._finalTimeout = context.finalTimeout
        self._closed = False
        self._post: _Post | None = None
        self._sender = ""
        self._recipients: list[str] = []

    @property
    def alive(self) -> bool:
        return not self._closed and (self._post is None or self._post.error is None)

    def mailFrom(self, sender: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        self._sender, self._recipients = sender, []
        return succeed(MAIL_OK)

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        self._recipients.append(recipient)
        return succeed(RCPT_OK)

    def data(self) -> Deferred[Reply]:
        headers = Headers(
            {
                b"Content-Type": [CONTENT_TYPE],
                b"X-Smtprelay-Mail-From": [f"<{self._sender}>".encode("ascii")],
                b"X-Smtprelay-Rcpt-To": [f"<{r}>".encode("ascii") for r in self._recipients],
            }
        )
        if self._authorization is not None:
            headers.setRawHeaders(b"Authorization", [self._authorization])
        self._post = _Post(self._agent, self._uri, headers, self._clock, self._timeout, self._finalTimeout)
        return succeed(GO_AHEAD)

    @property
    def _current(self) -> _Post:
        assert self._post is not None, "between data() and end()"
        return self._post

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._current.registerProducer(cast(IPushProducer, producer))  # the relay's producer streams

    def unregisterProducer(self) -> None:
        self._current.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._current.write(data)

    def end(self) -> Deferred[list[Reply]]:
        post, self._post = self._current, None
        return post.finish()

    def abort(self) -> None:
        self._forget()
        self._closed = True

    def reset(self) -> Deferred[None]:
        self._forget()
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.abort()
        return succeed(None)

    def _forget(self) -> None:
        """Drop the transaction, cancelling its request if one is under way."""
        post, self._post = self._post, None
        if post is not None:
            post.cancel(UpstreamError("lost", "transaction aborted"))
        self._sender, self._recipients = "", []


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """Connects, waits for the TLS handshake when there is one, and hangs up."""

    def __init__(self, tls: bool):
        self._tls = tls
        self.reached: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self._tls:
            self._done()

    def handshakeCompleted(self) -> None:
        self._done()

    def _done(self) -> None:
        if not self.reached.called:
            self.reached.callback(None)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.reached.called:
            self.reached.errback(reason)


def _reach(url: UpstreamURL, context: UpstreamContext) -> Deferred[None]:
    """Reach the hook's host as the POST will (TCP, and TLS verified as configured), within the timeout."""
    port = url.port or (443 if url.scheme == "https" else 80)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        context.reactor, url.host, port, timeout=replyTimeout(url, context)
    )
    tls = url.scheme == "https"
    if tls:
        endpoint = wrapClientTLS(clientTLSOptions(url), endpoint)
    probe = _Probe(tls)
    connected = endpoint.connect(Factory.forProtocol(lambda: probe))

    def unreachable(failure: Failure) -> None:
        if not probe.reached.called:
            probe.reached.errback(failure)

    connected.addErrback(unreachable)
    reached = probe.reached.addTimeout(replyTimeout(url, context), context.reactor)

    def failed(failure: Failure) -> None:
        error = _error(failure)
        raise UpstreamError(error.kind, f"webhook {url.host}:{port} unreachable: {failure.getErrorMessage()}")

    return reached.addErrback(failed)


@implementer(IPolicyForHTTPS)
class _URLTrust:
    """The TLS settings of one upstream URL (its agent only ever connects to its host)."""

    def __init__(self, url: UpstreamURL):
        self._url = url

    def creatorForNetloc(self, hostname: bytes, port: int):
        return clientTLSOptions(self._url)


@implementer(IUpstreamType)
class WebhookUpstreamType:
    """POSTs each message to an HTTP(S) web hook."""

    name = "webhook"
    schemes = ("https", "http")

    def __init__(self) -> None:
        self._agents: dict[tuple, Agent] = {}

    def validate(self, url: UpstreamURL) -> None:
        if url.scheme not in self.schemes:
            raise ValueError(f"not a webhook URL: {url.scheme}")
        if not url.host or not url.host.isascii():
            raise ValueError("a webhook URL needs a host (in ASCII): https://hooks.example.com/mail")
        if url.scheme == "http" and url.username is not None:
            raise ValueError("webhook credentials are only sent over https://")
        if url.scheme == "http" and {"verify", "ca"} & set(url.options):
            raise ValueError("verify and ca apply to https:// only")
        validateOptions(url, OPTIONS)

    def open(self, url: UpstreamURL, context: UpstreamContext) -> Deferred[WebhookSession]:
        """
        A session, once the hook's host was reached (TCP, and TLS with its
        certificate verified): a dead hook fails over to the tenant's next
        upstream before the client's DATA is answered, as a dead SMTP server
        does (docs/design.md §2).  The POST itself goes at DATA, over the
        agent's pool.
        """
        d = _reach(url, context)
        return d.addCallback(lambda _: WebhookSession(self._agent(url, context), url, context))

    def _agent(self, url: UpstreamURL, context: UpstreamContext) -> Agent:
        """
        The agent for this hook and trust settings, with its own connection
        pool: Twisted pools connections by scheme, host and port alone, so
        hooks on one host with other TLS settings must not share one.
        """
        key = (context, url.scheme, url.host, url.port, url.option("verify", "yes"), url.options.get("ca"))
        agent = self._agents.get(key)
        if agent is None:
            pool = HTTPConnectionPool(context.reactor, persistent=True)
            pool.maxPersistentPerHost = IDLE_CONNECTIONS
            pool.cachedConnectionTimeout = IDLE_SECONDS
            trust = _URLTrust(url.withoutPassword())
            agent = self._agents[key] = Agent(context.reactor, contextFactory=trust, pool=pool)
        return agent
