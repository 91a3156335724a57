"""
The seams plugin authors implement.  See C{docs/plugins.md} for the guide.

Every method that may wait returns a L{Deferred}; none of them may block the
reactor thread (use C{deferToThreadPool} for blocking work) and none of them
may raise: failures are returned as failed Deferreds.

The relay checks every plugin against its interface when it loads
(C{zope.interface.verify.verifyObject}): a plugin missing an attribute or
method is refused at startup, by name.  Optional capabilities are separate
interfaces (L{IUpstreamTLS}), so the check can be strict.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

__all__ = [
    "IAccessTokens",
    "IPolicy",
    "IPolicyFactory",
    "ISharedState",
    "IUpstreamSession",
    "IUpstreamTLS",
    "IUpstreamType",
]


class IUpstreamType(Interface):
    """
    A kind of upstream server, chosen by the scheme of the tenant's upstream
    URL.  Register it in a C{twisted/plugins/} module with
    L{relay.plugin.UpstreamTypePlugin}.
    """

    name = Attribute(
        """C{str}: a short lower-case name (C{"smtp"}), shown by
        C{--list-plugins} and used as the C{upstream_type} metric label."""
    )
    schemes = Attribute(
        """C{tuple[str, ...]}: the lower-case URL schemes this type handles,
        such as C{("smtp", "smtps", "smtp+starttls")}."""
    )

    def validate(url):
        """
        Check an upstream URL without touching the network.  Called by
        C{smtprelay-admin upstream add} and when the relay loads tenants.

        @param url: a L{relay.plugin.UpstreamURL} with one of L{schemes}.
        @raise ValueError: with a one-line reason the operator can act on.
        """

    def open(url, context):
        """
        Connect to the upstream and make it ready for a transaction.

        @param url: a validated L{relay.plugin.UpstreamURL}, password included.
        @param context: a L{relay.plugin.UpstreamContext} with the reactor,
            the relay's host name, a thread pool and the reply timeout.
        @return: a Deferred that fires with an L{IUpstreamSession} ready for
            C{mailFrom}, or fails with L{relay.plugin.UpstreamError} when
            the upstream cannot be used (the relay then tries the tenant's
            next upstream).
        """


class IUpstreamSession(IConsumer):
    """
    One open connection (or its equivalent) to an upstream, carrying one
    transaction at a time.  The relay calls, in order, and never two at
    once::

        mailFrom, rcptTo (once or more), data,
        write (any number of times), end     -- or abort() at any point
        reset()  before every reuse: after end, after a refusal, always
        close()  when it is no longer needed

    So a session clears its transaction's state in C{reset} (and may keep
    it until then): nothing of one message is seen by the next.  The relay
    owns what it already knows about the session (its URL, its type, for
    logs and metrics); the session says only whether it is still L{alive}.

    The methods returning a reply fire with a L{relay.plugin.Reply} for
    every answer the upstream gives, positive or not; they fail with
    L{relay.plugin.UpstreamError} only when the conversation broke
    (connection lost, timeout, garbage), after which the relay calls
    L{abort}.

    As an L{IConsumer}, the session receives the message bytes through
    C{write}: the message exactly as RFC 5322 text with CRLF line ends, not
    dot-stuffed.  The relay registers a streaming producer (the client's
    connection) before the first write and unregisters it after the last;
    pause it while the upstream cannot take more, so that memory stays
    bounded whatever the message size.
    """

    alive = Attribute(
        """C{bool}: C{False} once the connection is known to be gone; the
        relay never reuses a session that is not alive.  A session may also
        have C{reusableUntil} (reactor seconds, or C{None}): it is not given
        another transaction after that (its credentials expire then)."""
    )

    def mailFrom(sender, parameters):
        """
        Start a transaction.

        @param sender: the reverse-path as text (C{"a@example.com"}), or
            C{""} for the null sender.
        @param parameters: ESMTP parameters to pass on (C{{"SIZE": "1234"}}).
        @return: a Deferred firing with the upstream's L{Reply}.
        """

    def rcptTo(recipient, parameters):
        """
        Add a recipient.

        @return: a Deferred firing with the upstream's L{Reply}.
        """

    def data():
        """
        Ask to send the message.

        @return: a Deferred firing with the upstream's L{Reply}: a 3xx reply
            means C{write} may follow; anything else ends the transaction.
        """

    def end():
        """
        The whole message has been written; complete the transaction.

        @return: a Deferred firing with a sequence of L{Reply}: one reply for
            the whole message, or (LMTP) one per accepted recipient in
            C{rcptTo} order.
        """

    def abort():
        """
        Drop the transaction so that the upstream never delivers it
        (typically by closing the connection).  Synchronous, never fails; the
        session is not used again.
        """

    def reset():
        """
        Forget the transaction, however it ended (SMTP sends C{RSET} when
        the server still holds some of it), so the session can be reused.

        @return: a Deferred that fires with C{None} when ready for
            C{mailFrom}, or fails if the session cannot be reused (the relay
            then aborts it).
        """

    def close():
        """
        End the session politely (SMTP C{QUIT}).

        @return: a Deferred that fires when the connection is closed; never
            fails.
        """


class IUpstreamTLS(Interface):
    """
    Optional, for sessions over TLS: what the relay counts in
    C{smtprelay_tls_sessions_total{direction="upstream"}}.
    """

    tlsVersion = Attribute("""C{str | None}: the TLS version in use (C{"TLSv1.3"}), or C{None} in clear.""")


class IPolicy(Interface):
    """
    A policy: checks that run at fixed points of every session.  Every hook
    receives the L{relay.plugin.ClientInfo}; the transaction hooks also
    receive the L{relay.plugin.Transaction}.  Each returns a
    L{relay.plugin.Verdict}, or a Deferred firing with one.

    Subclass L{relay.plugin.Policy} and override the hooks you need; the
    others answer C{CONTINUE}.  The relay names the policy in metrics and
    logs by the name it was registered under.
    """

    def connect(client):
        """A client connected (its address is known, nothing said yet)."""

    def auth(client, login):
        """
        The client's credentials were correct for the login C{login}
        (C{client.tenant} is the tenant it will act as).  REJECT here fails
        the authentication (C{535 5.7.8}).
        """

    def mailFrom(client, transaction):
        """MAIL FROM: C{transaction.sender} and C{.parameters} are set."""

    def rcptTo(client, transaction, recipient):
        """
        RCPT TO for the L{relay.plugin.Mailbox} C{recipient}; earlier
        accepted recipients are in C{transaction.recipients}.
        """

    def headers(client, transaction, headers):
        """
        The message's header block arrived (before anything of the message
        was sent upstream).

        @param headers: a L{relay.plugin.HeaderBlock}.
        """

    def bodyChunk(client, transaction, chunk):
        """
        A piece of the body, as it streams through (C{bytes}, any length,
        split anywhere).  Keep what you need to match across pieces in
        C{transaction.notes}; never keep the whole body.  Called only while
        no policy has refused.
        """

    def endOfData(client, transaction):
        """
        The client sent the final dot.  The upstream has the whole message
        but not the dot yet: REJECT or TEMPFAIL here means it never gets it.
        """

    def reset(client, transaction):
        """
        The transaction ended, however it ended.  A notification: the return
        value is ignored.  Release here what C{mailFrom} took.
        """

    def disconnect(client):
        """The connection closed.  A notification: the return value is ignored."""


class IPolicyFactory(Interface):
    """
    Makes the L{IPolicy} a relay process uses.  Register it in a
    C{twisted/plugins/} module with L{relay.plugin.PolicyPlugin}; policies
    run in the order of their C{priority}.
    """

    name = Attribute("""C{str}: the policy's unique lower-case name: its metric label and its name in logs.""")
    description = Attribute("""C{str}: one line for C{--list-plugins}.""")
    priority = Attribute("""C{int}: lower runs first; built-ins use 100-900.""")

    def makePolicy(context):
        """
        @param context: a L{relay.plugin.PolicyContext} with the reactor,
            the relay's options and its shared state.
        @return: an L{IPolicy}.
        """


class ISharedState(Interface):
    """
    The Redis server every relay process and instance shares
    (C{--rate-limit-store}), for state that must not be per process.
    """

    client = Attribute("""A C{redis.Redis} client: blocking, so only ever used through L{call}.""")

    def call(f, *args):
        """
        Run C{f(*args)} (blocking calls of L{client}) off the reactor thread.

        @return: a Deferred firing with its result, or failing with its
            error (C{redis.RedisError} when the server cannot be reached).
        """

    def script(source):
        """
        Register a Lua script; call the result with C{keys=} and C{args=}
        inside L{call}.
        """


class IAccessTokens(Interface):
    """Access tokens for upstream sessions (L{UpstreamContext.tokens})."""

    def token(client):
        """
        A valid access token for C{client} (a
        L{relay.core.credentials.OAuthClient}): a Deferred
        L{relay.core.credentials.AccessToken}, failing with
        L{relay.seams.upstream.TokenError}.
        """
