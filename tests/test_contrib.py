"""
The monitoring files in contrib/: the Grafana dashboard and the Prometheus
alerts query only metrics the relay exports, promtool accepts the rules,
their unit tests, the example configuration and our exposition, and a real
Prometheus scrapes an exposition (tests.support.prometheus).

promtool and prometheus come from Debian's C{prometheus} package; without it
those tests are skipped, except under C{CI=true} where they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from prometheus_client import Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from relay.telemetry.metrics import Metrics
from tests.support.prometheus import JOB, PrometheusServer, requireTool

CONTRIB = Path(__file__).parent.parent / "contrib"
DASHBOARD = CONTRIB / "grafana" / "smtprelay.json"
PROMETHEUS = CONTRIB / "prometheus"

# PromQL words that look like metric names: keywords, modifiers, literals.
_KEYWORDS = frozenset("and or unless atan2 by without on ignoring group_left group_right offset bool inf nan".split())
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS_AND_RANGES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_LABEL_VALUES = re.compile(r"\blabel_values\((.*),\s*\w+\)")  # Grafana: label_values(selector, label)
# An identifier that is not part of a number or duration, nor a function name.
_NAME = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")


def metricNames(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query) selects."""
    expr = _LABEL_VALUES.sub(r"\1", expr)
    expr = _STRING.sub('""', expr)
    expr = _MATCHERS_AND_RANGES.sub("", expr)
    expr = _LABEL_LISTS.sub("", expr)
    return {name for name in _NAME.findall(expr) if name.lower() not in _KEYWORDS}


def populatedMetrics() -> Metrics:
    """A Metrics instance in which every metric, labelled or not, has a series."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labelNames = metric._labelnames  # no public accessor
            child = metric.labels(*["x"] * len(labelNames)) if labelNames else metric
            (child.observe if isinstance(metric, Histogram) else child.inc)(1)
    return metrics


def exposedNames(exposition: bytes) -> set[str]:
    """The names of all samples in a text exposition (C{_total}, C{_bucket}, ...)."""
    families = text_string_to_metric_families(exposition.decode())
    return {sample.name for family in families for sample in family.samples}


def dashboardExpressions() -> list[str]:
    """Every query of the dashboard: panel targets at any depth and query variables."""

    def targets(node) -> Iterator[str]:
        if isinstance(node, dict):
            if "expr" in node:
                yield node["expr"]
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                yield from targets(child)

    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [*targets(dashboard["panels"]), *variables]


def alertRules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_metricNames():
    """The extractor finds metric names and ignores functions, labels, strings, durations and variables."""
    expr = (
        'histogram_quantile(0.99, sum by (le, upstream_type) (rate(a_bucket{job="x", le=~"$v"}[$__rate_interval])))'
        " / on (job) group_left () (b_total offset 1h + (c or on(job) vector(0)) * 1e3) > bool 0.5"
        " unless sum(d) by (instance) and e:recorded"
    )
    assert metricNames(expr) == {"a_bucket", "b_total", "c", "d", "e:recorded"}
    assert metricNames('label_values(f{instance=~"$instance"}, tenant)') == {"f"}


def test_queriedMetricsExist():
    """Every metric the dashboard and the alerts query is in our exposition, or is up."""
    exposed = exposedNames(generate_latest(populatedMetrics().registry))
    queries = dashboardExpressions() + [rule["expr"] for rule in alertRules()]
    assert len(queries) > 30
    unknown = {
        (name, expr)
        for expr in queries
        for name in metricNames(expr)
        if name not in exposed and name != "up" and not name.startswith("process_")
    }
    assert not unknown


def test_dashboardShowsEveryMetric():
    """Each smtprelay metric has a panel: a new metric needs one."""
    queried = {name for expr in dashboardExpressions() for name in metricNames(expr)}
    families = text_string_to_metric_families(generate_latest(Metrics(processMetrics=False).registry).decode())
    missing = {f.name for f in families if not any(name.startswith(f.name) for name in queried)}
    assert not missing


def test_dashboardTemplating():
    """The dashboard has a datasource, an instance and a tenant variable, and a row repeated per tenant."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["tenant"]["query"]["query"].startswith("label_values(smtprelay_messages_total")
    assert "instance" in variables
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert {p["datasource"]["uid"] for p in panels if "datasource" in p} == {"${datasource}"}
    [tenantRow] = [p for p in panels if p.get("repeat") == "tenant"]
    assert tenantRow["type"] == "row"


def test_alertsDocumented():
    """Every alert has a severity, a summary, a description and a pending period."""
    rules = alertRules()
    assert {rule["alert"] for rule in rules} >= {
        "SmtprelayInstanceDown",
        "SmtprelayUpstreamErrorRatioHigh",
        "SmtprelayRelayLatencyHigh",
        "SmtprelayAuthFailureSpike",
        "SmtprelayTempfailRatioHigh",
        "SmtprelayUpstreamDown",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert "for" in rule, rule["alert"]


def promtool(*arguments: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [requireTool("promtool"), *arguments], input=input, capture_output=True, cwd=PROMETHEUS, timeout=60
    )


def test_promtoolChecksMetrics():
    """promtool check metrics finds no problem in our exposition, every series present."""
    result = promtool("check", "metrics", input=generate_latest(populatedMetrics().registry))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_promtoolChecksRules():
    """promtool accepts alerts.yml, its unit tests pass and the example configuration is valid."""
    for arguments in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = promtool(*arguments)
        assert result.returncode == 0, (arguments, result.stdout.decode() + result.stderr.decode())


@contextmanager
def servedExposition(body: bytes) -> Iterator[int]:
    """Serve C{body} as /metrics on a loopback port from a thread; yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="exposition", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_prometheusScrapes(tmp_path):
    """A real Prometheus scrapes our exposition: the counter's value and labels come back through its API."""
    requireTool("prometheus")
    metrics = Metrics(processMetrics=False)
    metrics.messages.labels(tenant="acme", result="relayed").inc(3)
    with servedExposition(generate_latest(metrics.registry)) as port:
        with PrometheusServer(f"127.0.0.1:{port}", tmp_path) as prometheus:
            [sample] = prometheus.waitFor('smtprelay_messages_total{tenant="acme"}')
    assert sample["metric"] == {
        "__name__": "smtprelay_messages_total",
        "instance": f"127.0.0.1:{port}",
        "job": JOB,
        "result": "relayed",
        "tenant": "acme",
    }
    assert sample["value"][1] == "3"
