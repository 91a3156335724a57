"""
A real Prometheus server for end-to-end tests: the C{prometheus} binary
(Debian package C{prometheus}) in a subprocess on a free loopback port,
scraping one target every second into a temporary TSDB.

    with PrometheusServer(f"127.0.0.1:{port}", tmp_path) as prometheus:
        [sample] = prometheus.waitFor('smtprelay_messages_total{result="relayed"} > 0')
        sample["metric"]["tenant"], sample["value"][1]

The first scrape comes about five seconds after start (Prometheus batches
target updates), so L{PrometheusServer.waitFor} waits up to 15 s by default.

Results are the C{data.result} list of the HTTP API's instant query
(U{https://prometheus.io/docs/prometheus/latest/querying/api/}): one
C{{"metric": {labels}, "value": [time, "value"]}} per series.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.relay import freePort

__all__ = ["JOB", "PrometheusServer", "requireTool"]

JOB = "smtprelay"  # the job name contrib/prometheus/alerts.yml selects
SCRAPE_INTERVAL = "1s"
HTTP_TIMEOUT = 5.0


def requireTool(name: str) -> str:
    """
    The path of C{prometheus} or C{promtool} (Debian package C{prometheus}).
    When absent the calling test is skipped, except under C{CI=true} where
    it fails: CI installs the package and must run these tests.
    """
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: the Prometheus tests must run", pytrace=False)
        pytest.skip(reason)
    return path


class PrometheusServer:
    """
    One Prometheus process scraping C{http://TARGET/metrics} as job
    L{JOB}; stop it with L{stop} or use it as a context manager.

    @ivar port: the port of its HTTP API, on 127.0.0.1.
    @ivar logFile: its stdout and stderr.
    """

    def __init__(self, target: str, directory: Path, metricsPath: str = "/metrics", readyTimeout: float = 30.0):
        """
        Start Prometheus and wait until it is ready to answer queries.

        @param target: C{host:port} to scrape.
        @param directory: holds the configuration, the TSDB and the log.
        @raise FileNotFoundError: the binary is not installed.
        @raise AssertionError: it exited or was not ready within
            C{readyTimeout} seconds (it is stopped; the message has its log).
        """
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian package prometheus)")
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "prometheus.yml"
        # JSON is YAML: no YAML library needed.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
                    "scrape_configs": [
                        {"job_name": JOB, "metrics_path": metricsPath, "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.port = freePort()
        self.logFile = directory / "prometheus.log"
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.logFile.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._waitUntilReady(readyTimeout)
        except BaseException:
            self.stop()
            raise

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _waitUntilReady(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self._url("/-/ready"), timeout=HTTP_TIMEOUT) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet, or 503 while it starts
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.logFile.read_text(errors="replace")

    def query(self, expr: str) -> list[dict]:
        """
        Evaluate a PromQL instant query now.

        @return: the series of the result (C{[]} when none matched).
        @raise AssertionError: the query was refused (bad syntax, ...).
        """
        url = self._url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:  # 400/422 carry the error as JSON
            answer = json.load(e)
        if answer["status"] != "success":
            raise AssertionError(f"query {expr!r} failed: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]["result"]

    def waitFor(self, expr: str, timeout: float = 15.0) -> list[dict]:
        """
        Poll L{query} until C{expr} has a result: put the condition in the
        expression (C{metric > 0}, C{up == 1}).

        @raise AssertionError: still no result after C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {expr!r} after {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate Prometheus (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
