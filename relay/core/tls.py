"""
The relay's own TLS settings, for STARTTLS and implicit-TLS listeners.
"""

from __future__ import annotations

import re
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

__all__ = ["MINIMUM_TLS", "PROFILES", "loadClientCertificate", "pemCertificates", "serverTLSOptions", "tlsVersion"]

MINIMUM_TLS = TLSVersion.TLSv1_2

# Mozilla's server-side TLS profiles (https://wiki.mozilla.org/Security/Server_Side_TLS, version 5.7):
# "modern" is TLS 1.3 only; "intermediate" adds TLS 1.2 with forward-secret AEAD ciphers.
PROFILES = {
    "modern": (TLSVersion.TLSv1_3, None),
    "intermediate": (
        TLSVersion.TLSv1_2,
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305",
    ),
}
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def tlsVersion(transport: ISystemHandle) -> str:
    """The TLS version of a connection over TLS (C{"TLSv1.3"}), from its pyOpenSSL handle."""
    return cast(SSL.Connection, transport.getHandle()).get_protocol_version_name()


def pemCertificates(data: bytes) -> list[bytes]:
    """Every PEM certificate block in C{data}, in order."""
    return _PEM_CERT.findall(data)


def serverTLSOptions(certPath: str, keyPath: str | None = None, profile: str = "intermediate") -> CertificateOptions:
    """
    Server TLS options from PEM files.

    @param certPath: the certificate, followed by its intermediate chain.
    @param keyPath: the private key; C{None} when it is in C{certPath}.
    @param profile: a key of L{PROFILES}.
    @raise ValueError: a file holds no certificate or no usable key, or the
        profile is unknown.
    """
    if profile not in PROFILES:
        raise ValueError(f"--tls-profile must be one of {', '.join(PROFILES)}")
    minimum, ciphers = PROFILES[profile]
    with open(certPath, "rb") as f:
        certData = f.read()
    keyData = certData
    if keyPath is not None:
        with open(keyPath, "rb") as f:
            keyData = f.read()
    blocks = pemCertificates(certData)
    if not blocks:
        raise ValueError(f"no certificate in {certPath}")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyData)
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise ValueError(f"cannot load TLS key or certificate: {e}") from None
    extra = {"acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(ciphers)} if ciphers else {}
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=minimum,
        # Session tickets (RFC 5077, RFC 8446 §4.6.1): a client that comes back (Salesforce opens a
        # connection for a handful of messages) resumes without the certificate and key exchange.
        # The ticket keys are this process's own (pyOpenSSL cannot set them), so with --workers N a
        # ticket resumes when the connection reaches the worker that issued it.
        enableSessionTickets=True,
        **extra,
    )


def loadClientCertificate(chain: bytes, key: bytes) -> x509.Certificate:
    """
    Check a client certificate and its key before they are stored: PEM, the
    key matching the certificate.

    @return: the certificate (for its subject and expiry).
    @raise ValueError: with the reason.
    """
    blocks = pemCertificates(chain)
    if not blocks:
        raise ValueError("the client certificate file holds no PEM certificate")
    try:
        certificate = x509.load_pem_x509_certificate(blocks[0])
        privateKey = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot load the client certificate or key: {e}") from None
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(certificate)
        context.use_privatekey(privateKey)  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error:
        raise ValueError("the client key does not belong to the client certificate") from None
    return certificate
