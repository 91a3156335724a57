"""
The monitoring HTTP listener (docs/design.md §6): C{/metrics} for Prometheus,
C{/healthz} (the process answers) and C{/readyz} (it can do its work).

Everything renders synchronously on the reactor thread: the exposition is
built from in-memory counters and takes well under a millisecond, so no
thread pool is involved (unlike C{prometheus_client.twisted}, which also
imports the global reactor).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import NOT_FOUND, SERVICE_UNAVAILABLE
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

__all__ = ["MonitoringResource", "Readiness", "metricsSite"]

Readiness = Callable[[], tuple[bool, str]]
"""
Answers "can this process do its work now?" with C{(ready, reason)}; the
reason is the body of the C{/readyz} reply (C{"ready"}, C{"draining"},
C{"tenant store unreachable"}, ...).
"""

_TEXT = b"text/plain; charset=utf-8"


class _Page(Resource):
    """
    A leaf page rendered synchronously by C{render_GET}; C{HEAD} gets the
    same status and headers without the body (C{Site} would log a warning
    for a HEAD body, and it would be wasted work).
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        raise NotImplementedError

    def render_HEAD(self, request: Request) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""


class _MetricsPage(_Page):
    """C{/metrics}: the Prometheus text exposition of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _HealthPage(_Page):
    """C{/healthz}: 200 whenever the reactor is running and answering."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return b"ok\n"


class _ReadyPage(_Page):
    """
    C{/readyz}: 200 when the readiness callable says so, 503 otherwise; the
    body is its reason.  A callable that raises counts as not ready.
    """

    log = Logger()

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        try:
            ready, reason = self._readiness()
        except Exception:
            self.log.failure("readiness check failed")
            ready, reason = False, "readiness check failed"
        if not ready:
            request.setResponseCode(SERVICE_UNAVAILABLE)
        request.setHeader(b"content-type", _TEXT)
        return f"{reason}\n".encode()


class _NotFoundPage(_Page):
    """Every other path: 404."""

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(NOT_FOUND)
        request.setHeader(b"content-type", _TEXT)
        return b"not found\n"


class MonitoringResource(Resource):
    """
    The root of the monitoring site: C{/metrics}, C{/healthz} and
    C{/readyz}; every other path, C{/} included, is 404.  Every page
    answers C{GET} and C{HEAD}.
    """

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        """
        @param registry: the registry whose metrics C{/metrics} exposes.
        @param readiness: consulted on every C{/readyz} request.
        """
        super().__init__()
        self.putChild(b"metrics", _MetricsPage(registry))
        self.putChild(b"healthz", _HealthPage())
        self.putChild(b"readyz", _ReadyPage(readiness))
        self._notFound = _NotFoundPage()

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self._notFound


class _QuietSite(Site):
    """
    A L{Site} that writes no access log and no factory start/stop lines: a
    scrape every few seconds would drown the relay's own log.
    """

    noisy = False
    displayTracebacks = False  # Site's default, stated: a traceback would leak to any scraper

    def log(self, request: Request) -> None:  # type: ignore[override]  # Twisted's stubs disagree with its own Site
        pass


def metricsSite(registry: CollectorRegistry, readiness: Readiness, reactor: IReactorTime) -> Site:
    """
    The monitoring HTTP site, ready for C{endpoint.listen}.

    @param registry: exposed on C{/metrics}.
    @param readiness: answers C{/readyz}.
    @param reactor: runs the HTTP connection timeouts.
    @return: a site that never shows tracebacks and logs no requests.
    """
    return _QuietSite(MonitoringResource(registry, readiness), reactor=reactor)
