"""
--workers: several relay processes on the same listeners, one log, one
/metrics, restarted when they die, drained together on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

from tests.support.relay import RelayProcess, upstreamURL
from tests.support.upstream import UpstreamServer

MESSAGE = b"From: a@example.com\r\nSubject: workers\r\n\r\nhello\r\n"


def relayed(relay: RelayProcess, tenant: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'smtprelay_messages_total{{result="relayed",tenant="{tenant}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def workerPids(relay: RelayProcess) -> dict[int, int]:
    return {int(w): int(p) for w, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", relay.log())}


def test_workers_share_listeners_metrics_and_log(ca, upstreamCert, tmp_path):
    """Two workers relay; the parent's /metrics adds them up; a dead worker is replaced; SIGTERM exits 0."""
    relay = RelayProcess(tmp_path / "relay", ca, "--workers=2")
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant("workers", upstreamURL(up, ca=str(ca.cert)))
        for _ in range(12):
            with relay.connect(account) as client:
                assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        assert len(up.waitForMessages(12)) == 12
        assert relayed(relay, "workers") == 12
        # Each worker runs the relay's own reactor (relay/runtime/reactor.py).
        assert (
            len(
                re.findall(r"\[worker \d\] reactor class: relay\.core\.twistedprivate\.DirectEPollReactor", relay.log())
            )
            == 2
        )
        assert set(workerPids(relay)) == {0, 1}
        assert "[worker 0]" in relay.log() or "[worker 1]" in relay.log()

        os.kill(workerPids(relay)[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(re.findall(r"worker 0 started", relay.log())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "worker 0 (pid" in relay.log() and "restarting" in relay.log()
        while len(re.findall(r"\[worker 0\] smtprelay listening on", relay.log())) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the new worker has loaded the store and listens on both listeners
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        pids = set(workerPids(relay).values())
        assert relay.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_worker_log_records_forwarded_at_once():
    """Each log record a worker writes is published as soon as its line is complete, split reads or not."""
    from twisted.logger import eventAsJSON, globalLogPublisher

    from relay.runtime.supervisor import _Worker

    seen = []
    observer = seen.append
    globalLogPublisher.addObserver(observer)
    try:
        worker = _Worker(service=None, index=3)
        records = [
            b"\x1e" + eventAsJSON({"log_format": f"line {i}", "log_time": 0.0}).encode() + b"\n" for i in range(2)
        ]
        stream = b"".join(records)
        worker.outReceived(stream[:10])
        assert [e for e in seen if e.get("worker") == 3] == []
        worker.outReceived(stream[10 : len(records[0])])
        assert [e["log_format"] for e in seen if e.get("worker") == 3] == ["line 0"]
        worker.outReceived(stream[len(records[0]) :])
        assert [e["log_format"] for e in seen if e.get("worker") == 3] == ["line 0", "line 1"]
        assert seen[-1]["log_system"] == "worker 3"
    finally:
        globalLogPublisher.removeObserver(observer)


def test_worker_log_lines_batched():
    """A worker's log lines reach the pipe together: at a drain, or once the batch is big, whole and in order."""
    import io

    from relay.telemetry.logs import BatchedOutput

    class Pipe(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            return super().write(text)

    pipe = Pipe()
    output = BatchedOutput(pipe, limit=100)
    for i in range(3):
        output.write(f"line {i}\n")
        output.flush()  # what the observer does after each line
    assert pipe.getvalue() == "" and pipe.writes == 0
    output.drain()
    assert pipe.getvalue() == "line 0\nline 1\nline 2\n" and pipe.writes == 1
    output.drain()
    assert pipe.writes == 1  # nothing waiting, nothing written
    output.write("x" * 60 + "\n")
    output.write("y" * 60 + "\n")  # over the limit: written without a drain
    assert pipe.getvalue().endswith("x" * 60 + "\n" + "y" * 60 + "\n") and pipe.writes == 2


def test_worker_records_round_trip():
    """
    What a worker's observer writes, the parent reads back as the same
    event: plain fields in the flat form, failures and objects through
    Twisted's JSON form, the level and the rendered text unchanged.
    """
    import io

    from twisted.logger import Logger, LogLevel, formatEvent

    from relay.telemetry.logs import decodeWorkerRecord, workerObserver

    out = io.StringIO()
    log = Logger(namespace="relay.test", observer=workerObserver(out))
    log.warn("{queueId} relayed to {upstream} in {seconds}s", queueId="Q1", upstream="smtp://h", seconds=0.5)
    log.info("an object: {thing!r}", thing=frozenset({1}))
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("went wrong for {tenant}", tenant="acme")
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == 3 and all(line.startswith("\x1e") for line in lines)
    plain, thing, failure = (decodeWorkerRecord(line[1:]) for line in lines)
    assert '"log_level": "warn"' in lines[0] and "log_logger" not in lines[0]  # the flat form
    assert plain["log_level"] is LogLevel.warn and plain["log_namespace"] == "relay.test"
    assert formatEvent(plain) == "Q1 relayed to smtp://h in 0.5s" and plain["seconds"] == 0.5
    assert formatEvent(thing) == "an object: frozenset({1})"
    assert failure["log_level"] is LogLevel.critical and formatEvent(failure) == "went wrong for acme"
    assert "ZeroDivisionError" in failure["log_failure"].getTraceback()
