"""
Upstream TLS, like an MTA's (docs/design.md §4, RFC 7435): the handshake
itself does not verify; the relay checks the certificate right after it,
before anything but EHLO was sent, and decides.

 - A verified connection is required for credentials, for
   C{smtp+starttls://} and C{smtps://} (and C{?verify=yes}): a certificate
   that fails ends the connection, the log saying which name and why
   (C{certificate for wrong.example does not match mail.acme.example}),
   never a bare "connection closed".
 - C{smtp://} and C{lmtp://} without credentials encrypt opportunistically:
   a certificate that fails is logged and the connection is used all the
   same (encrypted beats clear text, RFC 7435), unless C{?verify=yes}.
 - C{?verify=no} never verifies.

L{checkCertificate} is also what C{smtprelay-admin upstream test} prints.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from zope.interface import implementer

from relay.core.tls import MINIMUM_TLS, pemCertificates
from relay.core.urls import UpstreamURL

__all__ = ["CertificateCheck", "checkCertificate", "mustVerify", "upstreamTLS", "verifies"]


def mustVerify(url: UpstreamURL) -> bool:
    """Whether a certificate that fails ends the connection (see the module's rules)."""
    default = "yes" if url.username is not None or url.scheme in ("smtp+starttls", "smtps") else "opportunistic"
    return url.option("verify", default) == "yes"


def verifies(url: UpstreamURL) -> bool:
    """Whether the certificate is checked at all (C{?verify=no}: never)."""
    return url.option("verify", "yes") != "no"


@implementer(IOpenSSLClientConnectionCreator)
class _NamedClient:
    """TLS client connections that ask for C{hostname} (SNI) and leave verification to L{checkCertificate}."""

    def __init__(self, hostname: str, options: CertificateOptions):
        self._hostname = hostname
        self._context = options.getContext()

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not _isAddress(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


def upstreamTLS(url: UpstreamURL) -> IOpenSSLClientConnectionCreator:
    """
    The client TLS settings of an SMTP or LMTP upstream: TLS 1.2 at least,
    SNI, checked afterwards; the upstream's client certificate presented
    when its credentials have one (Microsoft 365 certificate connectors).
    """
    mine = url.credentials.clientCertificate if url.credentials is not None else None
    if mine is None:
        return _NamedClient(url.host, CertificateOptions(raiseMinimumTo=MINIMUM_TLS))
    chain = [crypto.load_certificate(crypto.FILETYPE_PEM, pem) for pem in pemCertificates(mine.chain)]
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, mine.key)
    options = CertificateOptions(
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:], raiseMinimumTo=MINIMUM_TLS
    )
    return _NamedClient(url.host, options)


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    """
    What the upstream's certificate says, and whether it verified.

    @ivar verified: it chains to a trusted root, is valid now and names the host.
    @ivar reason: why not (C{None} when it verified).
    """

    verified: bool
    reason: str | None
    subject: str = ""
    issuer: str = ""
    notAfter: datetime | None = None
    names: tuple[str, ...] = ()


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={common[0].value!s}" if common else name.rfc4514_string()


def _altNames(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(names.get_values_for_type(x509.DNSName)) + tuple(
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    )


def _trust(caFile: str | None) -> crypto.X509Store:
    store = crypto.X509Store()
    if caFile is None:  # the system's trust roots, where OpenSSL keeps them
        paths = ssl.get_default_verify_paths()
        cafile = paths.cafile if paths.cafile and os.path.exists(paths.cafile) else None
        capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
        if cafile or capath:
            store.load_locations(cafile, capath)
    else:
        with open(caFile, "rb") as f:
            for pem in pemCertificates(f.read()):
                store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
    return store


def checkCertificate(connection: SSL.Connection, host: str, caFile: str | None = None) -> CertificateCheck:
    """
    Check the certificate a TLS connection was given: its chain against
    C{caFile}'s certificates (or the system's trust roots), its dates, and
    that it names C{host} (service_identity).
    """
    peer = connection.get_peer_certificate()
    if peer is None:
        return CertificateCheck(False, "the upstream sent no certificate")
    certificate = peer.to_cryptography()
    names = _altNames(certificate)
    shown: dict[str, Any] = dict(
        subject=_name(certificate.subject),
        issuer=_name(certificate.issuer),
        notAfter=certificate.not_valid_after_utc,
        names=names,
    )
    chain = connection.get_peer_cert_chain() or []
    try:
        crypto.X509StoreContext(_trust(caFile), peer, chain=[c for c in chain[1:]]).verify_certificate()
    except crypto.X509StoreContextError as e:
        return CertificateCheck(False, f"certificate of {host} does not verify: {e}", **shown)
    try:
        if _isAddress(host):
            verify_certificate_ip_address(certificate, host)
        else:
            verify_certificate_hostname(certificate, host)
    except VerificationError:
        named = ", ".join(names) or shown["subject"]
        return CertificateCheck(False, f"certificate for {named} does not match {host}", **shown)
    return CertificateCheck(True, None, **shown)
