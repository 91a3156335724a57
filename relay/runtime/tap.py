"""
C{twistd smtprelay}: command-line options and the service they build.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.python import usage

from relay.runtime.proxy import PREFIX as PROXY_PREFIX
from relay.store.database import DEFAULT_DATABASE
from relay.store.secrets import DEFAULT_KEY_FILE
from relay.telemetry.logs import FORMATS

__all__ = ["Options", "makeService"]

DEFAULT_LISTENER = "tcp:2525:interface=127.0.0.1"


class Options(usage.Options, AuthOptionMixin):
    synopsis = "[options]"
    supportedInterfaces = (IUsernamePassword,)
    longdesc = (
        "A multi-tenant SMTP relay: tenants authenticate with SMTP AUTH over TLS and each message "
        "streams straight into the tenant's own upstream, which answers before we do.  Listeners "
        "are Twisted endpoint strings (e.g. tcp:587, haproxy:tcp:25); with no --smtp or --smtps "
        f"the relay listens on {DEFAULT_LISTENER}."
    )

    optFlags = [
        ["allow-insecure-auth", None, "Offer AUTH without TLS. For tests on loopback only."],
    ]
    optParameters = [
        ["database", None, os.environ.get("SMTPRELAY_DATABASE", DEFAULT_DATABASE), "Tenant store URL."],
        [
            "secret-key-file",
            None,
            os.environ.get("SMTPRELAY_SECRET_KEY_FILE", DEFAULT_KEY_FILE),
            "Key file for upstream credentials (created with mode 0600 when absent).",
        ],
        ["tls-cert", None, None, "PEM certificate (and chain) for STARTTLS and --smtps."],
        ["tls-key", None, None, "PEM private key (default: in --tls-cert)."],
        ["hostname", None, None, "Name in the greeting, EHLO and trace header (default: this host's FQDN)."],
        ["max-message-size", None, 50 * 1024 * 1024, "Largest message accepted, in octets (SIZE).", int],
        ["idle-timeout", None, 300.0, "Seconds a client may take to send its next command (RFC 5321 4.5.3.2).", float],
        ["upstream-timeout", None, 60.0, "Seconds to wait for any upstream reply (URL ?timeout= wins).", float],
        [
            "upstream-final-timeout",
            None,
            540.0,
            "Seconds to wait for the reply to the end of data (under the client's 10 minutes), then 451 4.4.7.",
            float,
        ],
        ["upstream-idle-timeout", None, 30.0, "Seconds an unused upstream connection stays open.", float],
        ["upstream-max-connections", None, 50, "Connections open at once to one upstream.", int],
        ["policy-timeout", None, 30.0, "Seconds a policy hook may take before the message is tempfailed.", float],
        ["refresh-interval", None, 2.0, "Seconds between checks of the store for changes.", float],
        ["usage-interval", None, 10.0, "Seconds between writes of usage counts to the store.", float],
        ["workers", None, os.cpu_count() or 1, "Relay processes sharing the listeners (default: one per core).", int],
        ["store-threads", None, 4, "Threads for database and password-hashing work.", int],
        ["rate-limit-store", None, None, "Share rate-limit budgets through Redis: redis://host:6379/0."],
        ["max-connections", None, 1000, "Client connections open at once (then 421 4.7.0).", int],
        ["max-connections-per-ip", None, 50, "Client connections open at once from one address.", int],
        ["max-auth-failures", None, 5, "AUTH failures from one address before it is refused for a while.", int],
        ["auth-failure-window", None, 900.0, "Seconds an AUTH failure counts against its address.", float],
        ["max-errors", None, 20, "Refused or unknown commands in one session before 421 and close.", int],
        [
            "max-recipients",
            None,
            1000,
            "Recipients per message (a tenant's own cap may be lower); RFC 5321 wants 100 at least.",
            int,
        ],
        ["line-timeout", None, 60.0, "Seconds a command line may take from its first byte to its end.", float],
        ["log-format", None, "text", "text (twistd's log lines) or json (JSON lines on standard output)."],
        ["metrics", None, "tcp:9464:interface=127.0.0.1", "Monitoring HTTP endpoint (/metrics, /healthz, /readyz)."],
        ["log-addresses", None, "full", "Envelope addresses in logs: full, domain, hash (keyed HMAC) or none."],
        ["tls-profile", None, "intermediate", "Mozilla TLS profile: intermediate (TLS 1.2+) or modern (TLS 1.3)."],
        ["handshake-timeout", None, 10.0, "Seconds for a client's TLS handshake or PROXY header.", float],
        ["data-timeout", None, 600.0, "Seconds the transfer of one message may take in all.", float],
        ["drain-timeout", None, 30.0, "At shutdown, seconds transactions in flight may take to finish.", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["smtp"] = []
        self["smtps"] = []
        self["disable-policy"] = []
        self["trusted-proxy"] = []
        self["inherit-fds"] = []

    def opt_smtp(self, endpoint: str) -> None:
        """Listen for SMTP on this endpoint, STARTTLS offered (repeatable)."""
        self["smtp"].append(endpoint)

    def opt_smtps(self, endpoint: str) -> None:
        """Listen for SMTP over implicit TLS on this endpoint (repeatable)."""
        self["smtps"].append(endpoint)

    def opt_trusted_proxy(self, network: str) -> None:
        """Accept PROXY headers on haproxy: listeners from this network (CIDR, repeatable); others are refused."""
        try:
            self["trusted-proxy"].append(ipaddress.ip_network(network.strip(), strict=True))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy {network}: {e} (expected CIDR such as 10.0.0.0/24)") from None

    def opt_disable_policy(self, name: str) -> None:
        """Do not run this installed policy (repeatable; see --list-plugins)."""
        self["disable-policy"].append(name)

    def opt_inherit_fds(self, fds: str) -> None:
        """(Internal: the listening sockets a --workers child inherits.)"""
        self["inherit-fds"] = [int(fd) for fd in fds.split(",")]

    def opt_list_plugins(self) -> None:
        """Print every upstream type, policy and credential checker found, with its origin, and exit."""
        from relay.seams.discovery import discover, listing

        print(listing(discover()))
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["smtp"] and not self["smtps"]:
            self["smtp"] = [DEFAULT_LISTENER]
        if self["smtps"] and not self["tls-cert"]:
            raise usage.UsageError("--smtps needs --tls-cert")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["log-format"] not in FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(FORMATS)}")
        proxied = [d for d in self["smtp"] + self["smtps"] if d.startswith(PROXY_PREFIX) and not _isUnix(d)]
        if proxied and not self["trusted-proxy"]:
            raise usage.UsageError(
                f"{proxied[0]}: a PROXY-protocol listener needs --trusted-proxy CIDR (the load balancers' "
                "addresses): otherwise any client could claim any address"
            )
        if self["hostname"] is None:
            self["hostname"] = socket.getfqdn()
        for name in (
            "max-message-size",
            "idle-timeout",
            "upstream-timeout",
            "upstream-final-timeout",
            "store-threads",
            "max-connections",
            "max-connections-per-ip",
            "max-auth-failures",
            "max-errors",
            "max-recipients",
            "line-timeout",
            "workers",
        ):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")


def _isUnix(description: str) -> bool:
    """A listener on a local socket (C{haproxy:unix:...}): its file mode decides who may connect."""
    return description.removeprefix(PROXY_PREFIX).startswith("unix:")


def makeService(options: Options):
    from twisted.internet import reactor

    from relay.runtime.service import RelayService, StartupError
    from relay.runtime.supervisor import WorkersService

    try:
        if options["workers"] > 1:
            return WorkersService(options, sys.argv, reactor)
        return RelayService(options, reactor)
    except StartupError as e:
        raise SystemExit(f"twistd smtprelay: {e}") from None
