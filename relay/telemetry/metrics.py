"""
The relay's Prometheus metrics (docs/design.md §6): names, labels and buckets in
one place.  Labels are bounded: tenant names, results, policy names and
upstream types, never an address.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

__all__ = ["DURATION_BUCKETS", "Metrics", "SIZE_BUCKETS"]

# 1 ms ... 5 min: a relayed message waits on the upstream's final reply.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# 1 KiB ... 50 MiB.
SIZE_BUCKETS = tuple(1024 * 4**i for i in range(8)) + (25 * 2**20, 50 * 2**20)

# No *_created series: they double the exposition and nothing here uses them.
disable_created_metrics()


class Metrics:
    """
    Every metric the relay exports, registered in one registry.

    Counters are created without the C{_total} suffix: the client library
    adds it in the exposition (C{smtprelay_connections_total}).
    """

    def __init__(self, registry: CollectorRegistry | None = None, processMetrics: bool = True):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if processMetrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.connections = Counter("smtprelay_connections", "Client connections accepted.", registry=r)
        self.connectionsActive = Gauge(
            "smtprelay_connections_active", "Client connections open now.", registry=r, multiprocess_mode="livesum"
        )
        self.authAttempts = Counter(
            "smtprelay_auth_attempts", "SMTP AUTH attempts.", ["mechanism", "result"], registry=r
        )
        self.messages = Counter(
            "smtprelay_messages",
            "Transactions that reached DATA, by outcome (relayed, rejected, tempfailed, aborted).",
            ["tenant", "result"],
            registry=r,
        )
        self.recipients = Counter(
            "smtprelay_recipients", "Recipients of those transactions, by outcome.", ["tenant", "result"], registry=r
        )
        self.messageBytes = Counter(
            "smtprelay_message_bytes", "Message bytes relayed (accepted by the upstream).", ["tenant"], registry=r
        )
        self.messageSize = Histogram(
            "smtprelay_message_size_bytes", "Size of relayed messages.", buckets=SIZE_BUCKETS, registry=r
        )
        self.relayDuration = Histogram(
            "smtprelay_relay_duration_seconds",
            "From DATA to the upstream's final reply.",
            ["tenant"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstreamConnectDuration = Histogram(
            "smtprelay_upstream_connect_duration_seconds",
            "Opening an upstream session (connect, greeting, TLS, AUTH).",
            ["upstream_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstreamErrors = Counter(
            "smtprelay_upstream_errors", "Upstream failures by kind.", ["upstream_type", "kind"], registry=r
        )
        self.upstreamUp = Gauge(
            "smtprelay_upstream_up",
            "1 while the upstream is usable, 0 while the circuit breaker holds it down (the lowest over workers).",
            ["tenant", "upstream"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.policyRejections = Counter(
            "smtprelay_policy_rejections", "Refusals (reject or tempfail) by policy.", ["policy"], registry=r
        )
        self.tlsSessions = Counter(
            "smtprelay_tls_sessions", "TLS sessions established.", ["direction", "version"], registry=r
        )
