"""
The C{smtp}, C{smtp+starttls} and C{smtps} upstream types.

URL forms (docs/design.md §4)::

    smtp://host[:25]                    STARTTLS when offered
    smtp+starttls://user:pass@host[:587] STARTTLS required
    smtps://user:pass@host[:465]        implicit TLS

Query options: C{verify=yes|no}, C{ca=PATH} (trust these PEM certificates
instead of the system's), C{timeout=SECONDS} (per reply),
C{auth=plain|login}.  Certificates are checked after the handshake
(L{relay.upstreams.certificates}): C{smtp://} without credentials encrypts
opportunistically unless C{verify=yes}; credentials, C{smtp+starttls://}
and C{smtps://} need a verified certificate unless C{verify=no}.
Credentials are only ever sent over TLS.
"""

from __future__ import annotations

import os
from base64 import b64encode
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

from relay.core.tls import MINIMUM_TLS, pemCertificates, tlsVersion
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.certificates import checkCertificate, mustVerify, upstreamTLS, verifies
from relay.upstreams.smtpclient import SMTPClientProtocol, SMTPSession

S = TypeVar("S", bound=SMTPSession)
log = Logger()

__all__ = [
    "SMTPUpstreamType",
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
    if url.option("auth", "plain") not in ("plain", "login"):
        raise ValueError("auth must be plain or login")
    if url.password is not None and url.username is None:
        raise ValueError("a password needs a user name")


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


async def _ehlo(protocol: SMTPClientProtocol, greet: bytes) -> dict[str, str]:
    """Say EHLO (or LHLO), falling back to HELO; return the extensions."""
    reply = await protocol.send(greet)
    if reply.code == 250:
        return {words[0].upper(): " ".join(words[1:]) for words in (line.split() for line in reply.lines[1:]) if words}
    if greet.startswith(b"EHLO"):
        reply = await protocol.send(b"HELO" + greet[4:])
        if reply.code == 250:
            return {}
    raise UpstreamError("refused", f"upstream refused our greeting: {reply.code} {reply.text}", reply)


async def _authenticate(protocol: SMTPClientProtocol, extensions: dict[str, str], url: UpstreamURL) -> None:
    """AUTH PLAIN or LOGIN with the URL's credentials (RFC 4954)."""
    offered = extensions.get("AUTH", "").upper().split()
    mechanism = url.options.get("auth") or ("login" if "LOGIN" in offered and "PLAIN" not in offered else "plain")
    user = (url.username or "").encode("utf-8")
    password = (url.password or "").encode("utf-8")
    if mechanism == "plain":
        reply = await protocol.send(b"AUTH PLAIN " + b64encode(b"\0" + user + b"\0" + password))
    else:
        reply = await protocol.send(b"AUTH LOGIN")
        for answer in (user, password):
            if reply.code != 334:
                break
            reply = await protocol.send(b64encode(answer))
    if reply.code != 235:
        raise UpstreamError("auth", f"upstream refused our credentials: {reply.code} {reply.text}", reply)


def _checkTLS(protocol: SMTPClientProtocol, url: UpstreamURL, peer: str) -> None:
    """
    The upstream's certificate, checked before anything but EHLO was sent:
    a failure ends the connection where verification is required, and is
    logged otherwise (opportunistic TLS, RFC 7435).
    """
    if not verifies(url):
        return
    check = checkCertificate(cast(SSL.Connection, protocol.transport.getHandle()), url.host, url.options.get("ca"))
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
) -> S:
    """
    Connect, read the greeting, say EHLO (or LHLO), negotiate TLS as the URL
    asks and authenticate; shared by the SMTP and LMTP types.

    @param peer: where the endpoint leads, for messages.
    @param greet: the greeting command line, C{b"EHLO name"} or C{b"LHLO name"}.
    @param session: the session class to make of the connection.
    @param startTLS: use STARTTLS when offered (or required by the scheme);
        C{False} on a local socket, where there is no host name to verify.
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
        if url.scheme == "smtps":
            _checkTLS(protocol, url, peer)
        if greeting.code != 220:
            raise UpstreamError("refused", f"upstream greeted us with {greeting.code} {greeting.text}", greeting)
        extensions = await _ehlo(protocol, greet)
        secure = url.scheme == "smtps"
        if startTLS and not secure and (url.scheme.endswith("+starttls") or "STARTTLS" in extensions):
            if "STARTTLS" not in extensions:
                raise UpstreamError("tls", f"{peer} does not offer STARTTLS")
            reply = await protocol.send(b"STARTTLS", discardAfter=True)
            if reply.code != 220:
                raise UpstreamError("tls", f"{peer} refused STARTTLS: {reply.code} {reply.text}", reply)
            protocol.transport.startTLS(upstreamTLS(url))
            secure = True
            extensions = await _ehlo(protocol, greet)  # the handshake is over once this is answered
            _checkTLS(protocol, url, peer)
        if url.username is not None:
            if not secure:
                raise UpstreamError("tls", f"refusing to send credentials to {peer} without TLS")
            await _authenticate(protocol, extensions, url)
    except UpstreamError:
        protocol.abort("setup failed")
        raise
    tls = tlsVersion(protocol.transport) if secure else None
    return session(protocol, extensions, tls, context.finalTimeout, peer)


@implementer(IUpstreamType)
class SMTPUpstreamType:
    """Relays into an SMTP server, the usual case."""

    name = "smtp"
    schemes = ("smtp", "smtp+starttls", "smtps")

    def validate(self, url: UpstreamURL) -> None:
        validateServerURL(url, self.schemes, "SMTP")

    def open(self, url: UpstreamURL, context: UpstreamContext) -> Deferred[SMTPSession]:
        tcp, peer = tcpEndpoint(url, context)
        endpoint = wrapClientTLS(upstreamTLS(url), tcp) if url.scheme == "smtps" else tcp
        greet = b"EHLO " + context.hostname.encode("ascii")
        return Deferred.fromCoroutine(connectSMTP(endpoint, peer, url, context, greet, SMTPSession))
