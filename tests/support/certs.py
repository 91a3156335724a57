"""
Throwaway X.509 certificates for tests.

A L{CA} issues leaf certificates for loopback servers; L{makeSelfSigned}
makes one that no CA vouches for (the "wrong certificate" case), and
L{CA.issue} with other C{hostnames} makes one for the wrong host.  Keys are
EC P-256 (fast to generate) and are written with mode 0600.

    ca = makeCA(tmp_path)
    server = ca.issue(tmp_path, "upstream")
    context = ca.clientContext()        # trusts only this CA
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "CertPaths", "makeCA", "makeSelfSigned"]

_VALIDITY = datetime.timedelta(days=7)
_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class CertPaths:
    """
    Where one certificate and its key were written.

    @ivar cert: PEM file with the certificate alone.
    @ivar key: PEM file (PKCS#8, unencrypted, mode 0600) with its private key.
    @ivar chain: PEM file with the certificate followed by its issuer's, or
        C{None} for a self-signed certificate.
    """

    cert: Path
    key: Path
    chain: Path | None = None

    def serverContext(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate (with chain)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain or self.cert, self.key)
        return context


@dataclass(frozen=True)
class CA:
    """
    A test certificate authority.

    @ivar cert: PEM file with the CA certificate (give it as C{cafile}).
    @ivar key: PEM file with the CA's private key.
    """

    cert: Path
    key: Path
    certificate: x509.Certificate
    privateKey: ec.EllipticCurvePrivateKey

    def issue(
        self,
        directory: str | os.PathLike[str],
        name: str,
        hostnames: list[str] | tuple[str, ...] = ("localhost",),
        ips: list[str] | tuple[str, ...] = ("127.0.0.1",),
        *,
        expired: bool = False,
    ) -> CertPaths:
        """
        Issue a leaf certificate valid for TLS servers and clients.

        @param name: the common name, also the file stem (C{NAME.pem},
            C{NAME.key}, C{NAME-chain.pem}).
        @param hostnames: DNS names in the subjectAltName; give others (say
            C{["wrong.invalid"]}, C{ips=[]}) for a wrong-hostname certificate.
        @param ips: IP addresses in the subjectAltName.
        @param expired: make one whose validity ended yesterday.
        """
        key = _newKey()
        builder = _builder(name, key, hostnames, ips, expired).issuer_name(self.certificate.subject)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.privateKey.public_key()), critical=False
        )
        certificate = builder.sign(self.privateKey, hashes.SHA256())
        paths = _write(Path(directory), name, certificate, key)
        chain = Path(directory) / f"{name}-chain.pem"
        chain.write_bytes(_pem(certificate) + _pem(self.certificate))
        return CertPaths(paths.cert, paths.key, chain)

    def clientContext(self) -> ssl.SSLContext:
        """A client context that trusts this CA alone and checks hostnames."""
        return ssl.create_default_context(cafile=str(self.cert))


def makeCA(directory: str | os.PathLike[str], name: str = "Test CA") -> CA:
    """
    Create a CA and write C{ca.pem} and C{ca.key} into C{directory}.
    """
    key = _newKey()
    builder = (
        _builder(name, key, (), (), False)
        .issuer_name(_subject(name))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    certificate = builder.sign(key, hashes.SHA256())
    paths = _write(Path(directory), "ca", certificate, key)
    return CA(paths.cert, paths.key, certificate, key)


def makeSelfSigned(
    directory: str | os.PathLike[str],
    name: str = "selfsigned",
    hostnames: list[str] | tuple[str, ...] = ("localhost",),
    ips: list[str] | tuple[str, ...] = ("127.0.0.1",),
) -> CertPaths:
    """
    Make a self-signed leaf certificate for the right host that no test CA
    signed: a client trusting only the CA must refuse it.
    """
    key = _newKey()
    builder = _builder(name, key, hostnames, ips, False).issuer_name(_subject(name))
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    return _write(Path(directory), name, builder.sign(key, hashes.SHA256()), key)


def _newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _subject(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _builder(name: str, key: ec.EllipticCurvePrivateKey, hostnames, ips, expired: bool) -> x509.CertificateBuilder:
    """
    The parts every certificate here shares: subject, key, serial, validity,
    subject key identifier and, for leaves (any C{hostnames} or C{ips}), the
    subjectAltName and server/client extended key usage.
    """
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - 2 * _VALIDITY, now - datetime.timedelta(days=1)) if expired else (now - _SKEW, now + _VALIDITY)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    names = [x509.DNSName(host) for host in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    return builder


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(directory: Path, name: str, certificate: x509.Certificate, key) -> CertPaths:
    """Write C{NAME.pem} and C{NAME.key} (mode 0600) into C{directory}."""
    directory.mkdir(parents=True, exist_ok=True)
    certPath, keyPath = directory / f"{name}.pem", directory / f"{name}.key"
    certPath.write_bytes(_pem(certificate))
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # in case the file already existed
        f.write(keyBytes)
    return CertPaths(certPath, keyPath)
