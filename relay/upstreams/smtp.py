"""
The C{smtp}, C{smtp+starttls} and C{smtps} upstream types.

URL forms (docs/design.md §4)::

    smtp://host[:25]                    STARTTLS when offered
    smtp+starttls://user:pass@host[:587] STARTTLS required
    smtps://user:pass@host[:465]        implicit TLS

Query options: C{verify=yes|no}, C{ca=PATH} (trust these PEM certificates
instead of the system's), C{timeout=SECONDS} (per reply),
C{auth=plain|login|xoauth2}.  Certificates are checked after the handshake
(L{relay.upstreams.certificates}): C{smtp://} without credentials encrypts
opportunistically unless C{verify=yes}; credentials, C{smtp+starttls://}
and C{smtps://} need a verified certificate unless C{verify=no}.
Credentials are only ever sent over TLS.

C{auth=xoauth2} (Microsoft 365, Google Workspace): the URL's user is the
mailbox to send as, the access token comes from the upstream's OAuth
client (L{relay.upstreams.oauth}), and the session is not reused past the
token's expiry (its C{reusableUntil}).  A client certificate in the upstream's credentials is
presented in the TLS handshake (certificate-based connectors).
"""

from __future__ import annotations

import os
from base64 import b64encode
from dataclasses import dataclass, field
from typing import TypeVar, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.tls import MINIMUM_TLS, pemCertificates, tlsVersion
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.certificates import CertificateCheck, checkCertificate, mustVerify, upstreamTLS, verifies
from relay.upstreams.oauth import TokenError
from relay.upstreams.smtpclient import SMTPClientProtocol, SMTPSession

S = TypeVar("S", bound=SMTPSession)
log = Logger()

__all__ = [
    "SMTPUpstreamType",
    "SetupNotes",
    "clientTLSOptions",
    "connectSMTP",
    "replyTimeout",
    "tcpEndpoint",
    "validateOptions",
    "validateServerURL",
]

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465, "lmtp": 24}
OPTIONS = frozenset({"verify", "ca", "timeout", "auth"})


def validateOptions(url: UpstreamURL, known: frozenset[str] | set[str] = OPTIONS) -> None:
    """
    Check the query options shared by the SMTP, LMTP and webhook types.

    @param known: the options this URL may have.
    @raise ValueError: an option is unknown or has a bad value.
    """
    unknown = set(url.options) - known
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    if url.option("verify", "yes") not in ("yes", "no"):
        raise ValueError("verify must be yes or no")
    if "ca" in url.options and not os.path.isfile(url.options["ca"]):
        raise ValueError(f"CA file {url.options['ca']!r} not found")
    try:
        if float(url.option("timeout", "60")) <= 0:
            raise ValueError
    except ValueError:
        raise ValueError("timeout must be a positive number of seconds") from None
    auth = url.option("auth", "plain")
    if auth not in ("plain", "login", "xoauth2"):
        raise ValueError("auth must be plain, login or xoauth2")
    if url.password is not None and url.username is None:
        raise ValueError("a password needs a user name")
    if auth == "xoauth2" and (url.username is None or url.password is not None):
        raise ValueError("auth=xoauth2 needs the mailbox as user name and no password (the token is the password)")


def replyTimeout(url: UpstreamURL, context: UpstreamContext) -> float:
    """Seconds to wait for the upstream: the URL's C{?timeout=} or the relay's default."""
    return float(url.option("timeout", str(context.timeout)))


def clientTLSOptions(url: UpstreamURL):
    """
    Verifying client TLS settings for an upstream URL (the webhook type's):
    the certificate of C{url.host} verified in the handshake (against
    C{?ca=} or the platform's trust roots) unless C{?verify=no}; TLS 1.2 at
    least.  SMTP and LMTP check theirs after the handshake instead
    (L{relay.upstreams.certificates}).
    """
    if url.option("verify", "yes") == "no":
        return CertificateOptions(raiseMinimumTo=MINIMUM_TLS)
    if "ca" in url.options:
        with open(url.options["ca"], "rb") as f:
            trust = trustRootFromCertificates([Certificate.loadPEM(pem) for pem in pemCertificates(f.read())])
    else:
        trust = platformTrust()
    return optionsForClientTLS(url.host, trustRoot=trust, extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS})


def validateServerURL(
    url: UpstreamURL, schemes: tuple[str, ...], protocol: str, known: frozenset[str] | set[str] = OPTIONS
) -> None:
    """
    Check a C{scheme://[user:pass@]host[:port][?options]} URL of the SMTP or
    LMTP types.

    @param protocol: the protocol's name, for messages.
    @raise ValueError: with the reason.
    """
    if url.scheme not in schemes:
        raise ValueError(f"not an {protocol} URL: {url.scheme}")
    if not url.host:
        raise ValueError(f"an {protocol} upstream needs a host")
    if url.path not in ("", "/"):
        raise ValueError(f"an {protocol} upstream URL has no path")
    validateOptions(url, known)


def tcpEndpoint(url: UpstreamURL, context: UpstreamContext) -> tuple[HostnameEndpoint, str]:
    """The endpoint for C{url.host} and the port (or the scheme's default), and its name for logs."""
    port = url.port or DEFAULT_PORTS[url.scheme]
    return HostnameEndpoint(context.reactor, url.host, port, timeout=replyTimeout(url, context)), f"{url.host}:{port}"


async def _ehlo(protocol: SMTPClientProtocol, greet: bytes, notes: SetupNotes | None = None) -> dict[str, str]:
    """Say EHLO (or LHLO), falling back to HELO; return the extensions."""
    reply = await protocol.send(greet)
    if notes is not None:
        notes.extensions = list(reply.lines[1:]) if reply.code == 250 else []
    if reply.code == 250:
        return {words[0].upper(): " ".join(words[1:]) for words in (line.split() for line in reply.lines[1:]) if words}
    if greet.startswith(b"EHLO"):
        reply = await protocol.send(b"HELO" + greet[4:])
        if reply.code == 250:
            return {}
    raise UpstreamError("refused", f"upstream refused our greeting: {reply.code} {reply.text}", reply)


@dataclass
class SetupNotes:
    """
    What opening an SMTP session showed, for C{smtprelay-admin upstream
    test} and the portal's "test connection" (L{relay.upstreams.diagnose}).
    """

    banner: str = ""
    extensions: list[str] = field(default_factory=list)  # the last EHLO's (after STARTTLS, when it was used)
    startTLS: str | None = None  # the upstream's reply to STARTTLS
    tlsVersion: str | None = None
    cipher: str | None = None
    certificate: CertificateCheck | None = None
    clientCertificate: bool = False
    auth: str | None = None  # the upstream's reply to AUTH, C{None} when none was sent
    tokenExpiresAt: float | None = None


async def _authenticate(
    protocol: SMTPClientProtocol, extensions: dict[str, str], url: UpstreamURL, context: UpstreamContext
) -> tuple[Reply, float | None]:
    """
    AUTH PLAIN, LOGIN or XOAUTH2 with the URL's credentials (RFC 4954):
    the upstream's C{235} and, for XOAUTH2, when its token expires.
    """
    offered = extensions.get("AUTH", "").upper().split()
    mechanism = url.options.get("auth") or ("login" if "LOGIN" in offered and "PLAIN" not in offered else "plain")
    user = (url.username or "").encode("utf-8")
    expires = None
    if mechanism == "xoauth2":
        token = await _accessToken(url, context)
        expires = token.expiresAt
        sasl = b"user=" + user + b"\x01auth=Bearer " + token.value.encode("ascii") + b"\x01\x01"
        reply = await protocol.send(b"AUTH XOAUTH2 " + b64encode(sasl))
        if reply.code == 334:  # the error challenge (base64 JSON): an empty line ends the exchange
            reply = await protocol.send(b"")
    elif mechanism == "plain":
        password = (url.password or "").encode("utf-8")
        reply = await protocol.send(b"AUTH PLAIN " + b64encode(b"\0" + user + b"\0" + password))
    else:
        password = (url.password or "").encode("utf-8")
        reply = await protocol.send(b"AUTH LOGIN")
        for answer in (user, password):
            if reply.code != 334:
                break
            reply = await protocol.send(b64encode(answer))
    if reply.code != 235:
        raise UpstreamError("auth", f"upstream refused our credentials: {reply.code} {reply.text}", reply)
    return reply, expires


async def _accessToken(url: UpstreamURL, context: UpstreamContext):
    oauth = url.credentials.oauth if url.credentials is not None else None
    if oauth is None or context.tokens is None:
        raise UpstreamError("token", "auth=xoauth2 but this upstream has no OAuth client configured")
    try:
        return await context.tokens.token(oauth)
    except TokenError as e:
        raise UpstreamError("token", f"no OAuth token from {oauth.tokenUrl}: {e}", e.reply) from None


def _checkTLS(protocol: SMTPClientProtocol, url: UpstreamURL, peer: str, notes: SetupNotes | None) -> None:
    """
    The upstream's certificate, checked before anything but EHLO was sent:
    a failure ends the connection where verification is required, and is
    logged otherwise (opportunistic TLS, RFC 7435).
    """
    connection = cast(SSL.Connection, protocol.transport.getHandle())
    if notes is not None:
        notes.tlsVersion, notes.cipher = connection.get_protocol_version_name(), connection.get_cipher_name()
        notes.certificate = checkCertificate(connection, url.host, url.options.get("ca"))
    if not verifies(url):
        return
    check = notes.certificate if notes is not None else None
    check = check or checkCertificate(connection, url.host, url.options.get("ca"))
    if check.verified:
        return
    if mustVerify(url):
        raise UpstreamError("tls", f"{peer}: {check.reason}")
    log.warn("opportunistic TLS to {peer}: {reason}; encrypting anyway", peer=peer, reason=check.reason)


async def connectSMTP(
    endpoint,
    peer: str,
    url: UpstreamURL,
    context: UpstreamContext,
    greet: bytes,
    session: type[S],
    startTLS: bool = True,
    notes: SetupNotes | None = None,
) -> S:
    """
    Connect, read the greeting, say EHLO (or LHLO), negotiate TLS as the URL
    asks and authenticate; shared by the SMTP and LMTP types.

    @param peer: where the endpoint leads, for messages.
    @param greet: the greeting command line, C{b"EHLO name"} or C{b"LHLO name"}.
    @param session: the session class to make of the connection.
    @param startTLS: use STARTTLS when offered (or required by the scheme);
        C{False} on a local socket, where there is no host name to verify.
    @param notes: filled in as the conversation goes, when given.
    """
    timeout = replyTimeout(url, context)
    factory = Factory.forProtocol(lambda: SMTPClientProtocol(context.reactor, timeout))
    factory.noisy = False
    try:
        protocol: SMTPClientProtocol = await endpoint.connect(factory)
    except Exception as e:
        raise UpstreamError("connect", f"cannot connect to {peer}: {e}") from None
    try:
        greeting = await protocol.greeting
        if notes is not None:
            notes.banner = greeting.summary
            notes.clientCertificate = url.credentials is not None and url.credentials.clientCertificate is not None
        if url.scheme == "smtps":
            _checkTLS(protocol, url, peer, notes)
        if greeting.code != 220:
            raise UpstreamError("refused", f"upstream greeted us with {greeting.code} {greeting.text}", greeting)
        extensions = await _ehlo(protocol, greet, notes)
        secure = url.scheme == "smtps"
        if startTLS and not secure and (url.scheme.endswith("+starttls") or "STARTTLS" in extensions):
            if "STARTTLS" not in extensions:
                raise UpstreamError("tls", f"{peer} does not offer STARTTLS")
            reply = await protocol.send(b"STARTTLS", discardAfter=True)
            if notes is not None:
                notes.startTLS = reply.summary
            if reply.code != 220:
                raise UpstreamError("tls", f"{peer} refused STARTTLS: {reply.code} {reply.text}", reply)
            protocol.transport.startTLS(upstreamTLS(url))  # with our client certificate, if any
            secure = True
            extensions = await _ehlo(protocol, greet, notes)  # the handshake is over once this is answered
            _checkTLS(protocol, url, peer, notes)
        expires = None
        if url.username is not None:
            if not secure:
                raise UpstreamError("tls", f"refusing to send credentials to {peer} without TLS")
            try:
                accepted, expires = await _authenticate(protocol, extensions, url, context)
            except UpstreamError as e:
                if notes is not None:
                    notes.auth = e.reply.summary if e.reply is not None else str(e)
                raise
            if notes is not None:
                notes.auth, notes.tokenExpiresAt = accepted.summary, expires
    except UpstreamError:
        protocol.abort("setup failed")
        raise
    tls = tlsVersion(protocol.transport) if secure else None
    opened = session(protocol, extensions, tls, context.finalTimeout, peer)
    opened.reusableUntil = expires
    return opened


@implementer(IUpstreamType)
class SMTPUpstreamType:
    """Relays into an SMTP server, the usual case."""

    name = "smtp"
    schemes = ("smtp", "smtp+starttls", "smtps")

    def validate(self, url: UpstreamURL) -> None:
        validateServerURL(url, self.schemes, "SMTP")

    def open(
        self, url: UpstreamURL, context: UpstreamContext, notes: SetupNotes | None = None
    ) -> Deferred[SMTPSession]:
        """Connect, greet, secure and log in; C{notes} filled in as it goes (L{relay.upstreams.diagnose})."""
        tcp, peer = tcpEndpoint(url, context)
        endpoint = wrapClientTLS(upstreamTLS(url), tcp) if url.scheme == "smtps" else tcp
        greet = b"EHLO " + context.hostname.encode("ascii")
        return Deferred.fromCoroutine(connectSMTP(endpoint, peer, url, context, greet, SMTPSession, notes=notes))
