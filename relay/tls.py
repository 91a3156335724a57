"""
The relay's own TLS settings, for STARTTLS and implicit-TLS listeners.
"""

from __future__ import annotations

import re

from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

__all__ = ["MINIMUM_TLS", "pemCertificates", "serverTLSOptions"]

MINIMUM_TLS = TLSVersion.TLSv1_2
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def pemCertificates(data: bytes) -> list[bytes]:
    """Every PEM certificate block in C{data}, in order."""
    return _PEM_CERT.findall(data)


def serverTLSOptions(certPath: str, keyPath: str | None = None) -> CertificateOptions:
    """
    Server TLS options from PEM files.

    @param certPath: the certificate, followed by its intermediate chain.
    @param keyPath: the private key; C{None} when it is in C{certPath}.
    @raise ValueError: a file holds no certificate or no usable key.
    """
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
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=MINIMUM_TLS,
    )
