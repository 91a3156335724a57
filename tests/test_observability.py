"""
Observability of a running relay: a real Prometheus scraping it, promtool
on the live exposition, health endpoints, and what the logs may show.
"""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from tests.support.prometheus import PrometheusServer, requireTool
from tests.support.relay import RelayProcess, upstreamURL

MESSAGE = b"From: a@example.com\r\nSubject: observed\r\n\r\nhello\r\n"


def fetch(relay: RelayProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def send(relay: RelayProcess, account, count: int) -> None:
    with relay.connect(account) as client:
        for _ in range(count):
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}


def test_prometheus_counts_what_was_relayed(relay, upstream, tenantName, tmp_path):
    """A real Prometheus scraping the live relay reads smtprelay_messages_total equal to what was relayed."""
    binary = requireTool("prometheus")
    assert binary
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=str(relay.ca.cert)))
    send(relay, account, 2)
    with PrometheusServer(f"127.0.0.1:{relay.metricsPort}", tmp_path) as prometheus:
        query = f'smtprelay_messages_total{{tenant="{tenantName}",result="relayed"}}'
        prometheus.waitFor(f"{query} == 2")
        send(relay, account, 3)  # while it scrapes
        [result] = prometheus.waitFor(f"{query} == 5")
        assert float(result["value"][1]) == len(upstream.waitForMessages(5)) == 5


def test_promtool_accepts_live_exposition(relay, upstream, tenantName):
    """promtool check metrics passes on the relay's own /metrics, after traffic."""
    promtool = requireTool("promtool")
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=str(relay.ca.cert)))
    send(relay, account, 1)
    status, body = fetch(relay, "/metrics")
    assert status == 200 and b"smtprelay_relay_duration_seconds_bucket" in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_endpoints(relay):
    """/healthz answers while alive; /readyz when listening with the store reachable."""
    assert fetch(relay, "/healthz") == (200, b"ok\n")
    assert fetch(relay, "/readyz") == (200, b"ready\n")
    assert fetch(relay, "/nothing")[0] == 404


@pytest.mark.parametrize(
    "mode, shown, hidden",
    [
        ("full", ["from=a@example.com"], []),
        ("domain", ["from=*@example.com"], ["a@example.com"]),
        ("hash", ["from=h:"], ["a@example.com", "example.com"]),
        ("none", ["from=-"], ["a@example.com", "example.com"]),
    ],
)
def test_log_address_modes(ca, upstreamCert, tmp_path, mode, shown, hidden):
    """Transaction log lines show addresses only as --log-addresses allows, and never a password."""
    from tests.support.upstream import UpstreamServer

    relay = RelayProcess(tmp_path / "relay", ca, f"--log-addresses={mode}")
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("logs", upstreamURL(up, ca=str(ca.cert)))
            send(relay, account, 1)
            up.waitForMessages(1)
        log = relay.log()
    finally:
        relay.stop()
    [line] = [line for line in log.splitlines() if " relayed: tenant=logs" in line]
    for text in shown:
        assert text in line
    for text in hidden:
        assert text not in log
    assert account.password not in log


def test_json_logs(ca, upstreamCert, tmp_path):
    """--log-format json writes one JSON object per line, the transaction's fields as keys."""
    import json

    from tests.support.upstream import UpstreamServer

    relay = RelayProcess(tmp_path / "relay", ca, "--log-format=json", "--log-addresses=domain")
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("jsonlogs", upstreamURL(up, ca=str(ca.cert)))
            send(relay, account, 1)
            up.waitForMessages(1)
    finally:
        relay.stop()
    records = [json.loads(line) for line in relay.stdout().splitlines() if line.strip()]
    [transaction] = [r for r in records if r.get("result") == "relayed"]
    assert transaction["tenant"] == "jsonlogs" and transaction["sender"] == "*@example.com"
    assert transaction["level"] == "info" and transaction["time"].endswith("+00:00")
    assert all(set(r) >= {"time", "level", "namespace", "text"} for r in records)


def test_usage_matches_what_was_sent(ca, upstreamCert, tmp_path, capsys):
    """smtprelay-admin usage shows exactly what the client sent, written at a clean shutdown."""
    import json

    from relay.admin.cli import main
    from tests.support.upstream import UpstreamServer

    relay = RelayProcess(tmp_path / "relay", ca, "--usage-interval=3600")
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant("billed", upstreamURL(up, ca=str(ca.cert)))
        up.setReply("MAIL", "451 4.3.0 later", times=1)
        with relay.connect(account) as client:
            assert client.mail("a@example.com")[0] == 250  # the relay's
            assert client.rcpt("b@example.net")[0] == 451  # the upstream refused MAIL for now
            client.rset()
            for recipients in (["b@example.net"], ["b@example.net", "c@example.net"], ["d@example.net"]):
                assert client.sendmail("a@example.com", recipients, MESSAGE) == {}
            assert client.mail("a@evil.example")[0] == 550
        up.waitForMessages(3)
        assert relay.stop() == 0
    assert (
        main(["--database", relay.database, "--secret-key-file", str(relay.keyFile), "usage", "billed", "--json"]) == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    assert {k: rows[0][k] for k in ("relayed", "recipients", "rejected", "failed")} == {
        "relayed": 3,
        "recipients": 4,
        "rejected": 1,
        "failed": 1,
    }
    assert rows[0]["bytes"] == 3 * (len(MESSAGE))
