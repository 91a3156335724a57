"""
The monitoring resources of relay.telemetry.monitoring, rendered in memory: DummyRequest for
each page, the real Site over a StringTransport for what HTTP adds (HEAD, no
access log).  No sockets, no global reactor.
"""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from relay.telemetry.metrics import Metrics
from relay.telemetry.monitoring import MonitoringResource, metricsSite


def ready():
    return True, "ready"


def render(root: MonitoringResource, path: str) -> tuple[DummyRequest, bytes]:
    """GET C{path} from C{root}: the request (code, headers) and the body."""
    request = DummyRequest(path.encode().split(b"/")[1:])
    return request, getChildForRequest(root, request).render(request)


def test_metrics():
    """/metrics is the text exposition of the registry given, labelled series included."""
    metrics = Metrics()
    metrics.messages.labels(tenant="acme", result="relayed").inc()
    request, body = render(MonitoringResource(metrics.registry, ready), "/metrics")
    assert request.responseCode is None  # 200
    assert request.responseHeaders.getRawHeaders(b"content-type") == [CONTENT_TYPE_LATEST.encode()]
    assert b'smtprelay_messages_total{result="relayed",tenant="acme"} 1.0\n' in body
    assert b"\nprocess_open_fds " in body


def test_healthz():
    """/healthz answers 200 "ok" without consulting readiness."""

    def notCalled():
        raise AssertionError("readiness consulted")

    request, body = render(MonitoringResource(Metrics().registry, notCalled), "/healthz")
    assert (request.responseCode, body) == (None, b"ok\n")


def test_readyzReady():
    """/readyz is 200 with the readiness reason when ready."""
    request, body = render(MonitoringResource(Metrics().registry, ready), "/readyz")
    assert (request.responseCode, body) == (None, b"ready\n")


def test_readyzNotReady():
    """/readyz is 503 with the reason when not ready; it asks on every request."""
    state = [(False, "draining")]
    root = MonitoringResource(Metrics().registry, lambda: state[0])
    request, body = render(root, "/readyz")
    assert (request.responseCode, body) == (503, b"draining\n")
    state[0] = (True, "ready")
    assert render(root, "/readyz")[0].responseCode is None


def test_readyzFailing():
    """A readiness callable that raises means 503, and the error is logged."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        request, body = render(MonitoringResource(Metrics().registry, lambda: 1 / 0), "/readyz")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (request.responseCode, body) == (503, b"readiness check failed\n")
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [ZeroDivisionError]


def test_notFound():
    """Any other path, the root included, is 404."""
    root = MonitoringResource(Metrics().registry, ready)
    for path in ("/", "/nope", "/metrics.txt"):
        assert render(root, path)[0].responseCode == 404, path


def fetch(site: Site, method: str, path: str) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request through C{site} over a StringTransport: the response head and body."""
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: relay.test\r\n\r\n".encode())
    channel.connectionLost(None)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head, body


def test_siteHeadQuiet():
    """Through the real Site: HEAD has the GET status and headers but no body, and serving logs nothing."""
    # No process metrics: the GET below must render byte for byte what HEAD measured.
    site = metricsSite(Metrics(processMetrics=False).registry, lambda: (False, "draining"), MemoryReactorClock())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        site.doStart()
        responses = {path: fetch(site, "HEAD", path) for path in ("/metrics", "/readyz", "/nope")}
        _, getBody = fetch(site, "GET", "/metrics")
        site.doStop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    metricsHead = responses["/metrics"][0]
    assert metricsHead.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode() in metricsHead
    assert b"\r\nContent-Length: %d" % len(getBody) in metricsHead
    assert responses["/readyz"][0].startswith(b"HTTP/1.1 503 ")
    assert responses["/nope"][0].startswith(b"HTTP/1.1 404 ")
    assert [body for _, body in responses.values()] == [b"", b"", b""]
    assert events == []
