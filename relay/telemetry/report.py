"""
What the relay tells its operators: Prometheus metrics and one structured
log line per connection and per transaction.

Log events carry their fields as data (C{twisted.logger} formats), never
message content or AUTH secrets; addresses are shown as the operator chose
with C{--log-addresses}: C{full}, C{domain} (C{*@example.com}), C{hash} (a
keyed HMAC, so the same address always gives the same token and nobody
without the key can reverse it) or C{none}.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from twisted.logger import Logger

from relay.core.address import Mailbox
from relay.core.envelope import ClientInfo, Transaction
from relay.core.logtext import logText
from relay.core.reply import Reply
from relay.telemetry.metrics import Metrics

__all__ = ["ADDRESS_MODES", "AddressRedactor", "Reporter"]

ADDRESS_MODES = ("full", "domain", "hash", "none")


class AddressRedactor:
    """Shows an envelope address the way C{--log-addresses} asks."""

    def __init__(self, mode: str, key: bytes = b""):
        if mode not in ADDRESS_MODES:
            raise ValueError(f"--log-addresses must be one of {', '.join(ADDRESS_MODES)}")
        if mode == "hash" and not key:
            raise ValueError("hashing addresses needs a key")
        self._mode = mode
        self._key = key

    def __call__(self, mailbox: Mailbox | None) -> str:
        if mailbox is None:
            return "<>"
        if self._mode == "full":
            return logText(str(mailbox))  # a quoted local part may hold spaces and quotes
        if self._mode == "domain":
            return "*@" + mailbox.domain.lower()
        if self._mode == "hash":
            digest = hmac.new(self._key, str(mailbox).lower().encode(), hashlib.sha256).hexdigest()
            return "h:" + digest[:20]
        return "-"


_TRANSACTION = (
    "{queueId} {result}: tenant={tenant} client={client} from={sender} recipients={recipients} "
    "size={size} upstream={upstream} reply={reply} duration={seconds}s"
)


@dataclass(frozen=True, slots=True)
class _Counters:
    messages: Counter
    recipients: Counter
    bytes: Counter
    duration: Histogram


def _result(reply: Reply) -> str:
    """A final reply as a C{result} label value."""
    if reply.positive:
        return "relayed"
    return "tempfailed" if reply.transient else "rejected"


class Reporter:
    """Counts into L{Metrics} and logs; one per relay process."""

    log = Logger(namespace="smtprelay")

    def __init__(self, metrics: Metrics, redact: AddressRedactor, usage=None, activity=None):
        """
        @param usage: counts each transaction per tenant and day for billing
            (a L{relay.telemetry.accounting.UsageRecorder}), or C{None}.
        @param activity: keeps each transaction's outcome per recipient for
            the portal (a L{relay.telemetry.activity.ActivityRecorder}), or
            C{None}.
        """
        self.metrics = metrics
        self._redact = redact
        self._usage = usage
        self._activity = activity
        self._children: dict[tuple[str, str], _Counters] = {}

    def connectionOpened(self) -> None:
        self.metrics.connections.inc()
        self.metrics.connectionsActive.inc()

    def connectionClosed(self, client: ClientInfo, seconds: float, transactions: int) -> None:
        self.metrics.connectionsActive.dec()
        self.log.info(
            "connection {session} from {client} closed after {seconds}s: tenant={tenant} tls={tls} "
            "transactions={transactions}",
            session=client.sessionId,
            client=client.address,
            seconds=round(seconds, 3),
            tenant=client.tenant.name if client.tenant else None,
            tls=client.tls,
            transactions=transactions,
        )

    def refused(self, rule: str, client: ClientInfo, reply: Reply) -> None:
        """A policy (or a built-in limit) refused something."""
        self.metrics.policyRejections.labels(rule).inc()
        self.log.info(
            "{rule} refused {client} tenant={tenant}: {code} {text}",
            rule=rule,
            client=client.address,
            tenant=client.tenant.name if client.tenant else None,
            code=reply.code,
            text=reply.text,
        )

    def auth(self, mechanism: str, success: bool) -> None:
        self.metrics.authAttempts.labels(mechanism, "success" if success else "failure").inc()

    def tls(self, direction: str, version: str) -> None:
        self.metrics.tlsSessions.labels(direction, version).inc()

    def upstreamOpened(self, upstreamType: str, seconds: float, tls: str | None) -> None:
        self.metrics.upstreamConnectDuration.labels(upstreamType).observe(seconds)
        if tls:
            self.tls("upstream", tls)

    def upstreamError(self, upstreamType: str, kind: str) -> None:
        self.metrics.upstreamErrors.labels(upstreamType, kind).inc()

    def upstreamState(self, tenant: str, upstream: str, up: bool) -> None:
        """The circuit breaker's view of one of a tenant's upstreams (its URL redacted)."""
        self.metrics.upstreamUp.labels(tenant, upstream).set(1 if up else 0)

    def transaction(
        self,
        client: ClientInfo,
        transaction: Transaction,
        reply: Reply,
        upstream: str | None,
        seconds: float,
        aborted: bool = False,
    ) -> None:
        """
        A transaction ended with C{reply} (or the client went away, when
        C{aborted}): count it and log one line.
        """
        tenant = client.tenant.name if client.tenant else "-"
        result = "aborted" if aborted else _result(reply)
        recipients = len(transaction.recipients)
        counters = self._counters(tenant, result)
        counters.messages.inc()
        counters.recipients.inc(recipients)
        if self._usage is not None and client.tenant is not None:
            self._usage.count(tenant, result, recipients, transaction.size)
        if self._activity is not None and client.tenant is not None and recipients:
            self._activity.transaction(
                tenant,
                transaction.queueId,
                transaction.messageId,
                self._redact(transaction.sender),
                [self._redact(recipient) for recipient in transaction.recipients],
                transaction.size,
                upstream,
                reply.summary,
                result,
            )
        if result == "relayed":
            counters.bytes.inc(transaction.size)
            counters.duration.observe(seconds)
            self.metrics.messageSize.observe(transaction.size)
        fields = dict(
            queueId=transaction.queueId,
            result=result,
            tenant=tenant,
            client=client.address,
            sender=self._redact(transaction.sender),
            recipients=recipients,
            size=transaction.size,
            upstream=upstream,
            reply=f"{reply.code} {reply.enhanced or ''}".strip(),
            seconds=round(seconds, 3),
        )
        # Rendered here with str.format (C) rather than by the log observer's
        # pure-Python formatter: this line is written for every message.
        self.log.info("{line}", line=_TRANSACTION.format(**fields), **fields)

    def _counters(self, tenant: str, result: str) -> _Counters:
        """The labelled metric children of a tenant and result, looked up once."""
        key = (tenant, result)
        counters = self._children.get(key)
        if counters is None:
            m = self.metrics
            counters = self._children[key] = _Counters(
                m.messages.labels(tenant, result),
                m.recipients.labels(tenant, result),
                m.messageBytes.labels(tenant),
                m.relayDuration.labels(tenant),
            )
        return counters
