"""
C{--workers N}: one reactor process per core.

The parent (what C{twistd smtprelay} runs) opens every listening socket,
then starts N worker processes that inherit them and each accept from them:
the kernel spreads connections over the workers, and nothing about a session
is shared, so throughput grows with the cores.  The parent does no SMTP. It

 - restarts a worker that dies;
 - forwards every worker's log events (JSON lines on the worker's standard
   output) into its own log, tagged with the worker's number, so C{--logfile}
   and C{--log-format} apply to all;
 - serves C{/metrics} for all of them (prometheus_client's multiprocess
   mode: each worker writes its samples to files in a private directory);
 - on SIGTERM stops listening, tells every worker to drain and waits for them,
   then exits 0.

Per-process state stays per worker: in-memory rate-limit budgets (use
C{--rate-limit-store redis://...} to share them), connection caps and the
AUTH failure memory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, globalLogPublisher

from relay.runtime.proxy import PREFIX
from relay.runtime.service import StartupError, checkConfiguration, stopOnTerminate
from relay.telemetry.logs import decodeWorkerRecord, useLogFormat
from relay.telemetry.monitoring import metricsSite

__all__ = ["WorkersService", "workerArguments"]

_RECORD_SEPARATOR = b"\x1e"  # twisted.logger.jsonFileLogObserver's


def workerArguments(argv: list[str], fds: list[int]) -> list[str]:
    """
    The options of a worker: the parent's own C{smtprelay} options (after
    the subcommand in C{argv}), minus C{--workers}, plus the sockets it
    inherits.
    """
    options = argv[argv.index("smtprelay") + 1 :]
    kept = []
    skip = False
    for arg in options:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept + ["--workers=1", "--inherit-fds=" + ",".join(map(str, fds))]


class _Worker(ProcessProtocol):
    """One worker process: forwards its log, reports its end."""

    process: IProcessTransport  # set once spawned
    pid: int

    def __init__(self, service: WorkersService, index: int):
        self._service = service
        self.index = index
        self.ended: Deferred[int] = Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        # relay.telemetry.logs.workerObserver writes one record a line: RS, JSON, LF.
        self._buffer += data
        *records, self._buffer = self._buffer.split(b"\n")
        for record in records:
            record = record.lstrip(_RECORD_SEPARATOR)
            if record.strip():
                event = decodeWorkerRecord(record.decode("utf-8", "replace"))
                event["worker"] = self.index
                event["log_system"] = f"worker {self.index}"
                globalLogPublisher(event)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            self._service.log.error("worker {worker}: {line}", worker=self.index, line=line)

    def processEnded(self, reason) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.ended.callback(code)


class WorkersService(Service):
    """
    @param options: the parsed C{smtprelay} options.
    @param argv: the command line the parent was started with.
    """

    log = Logger()

    def __init__(self, options, argv: list[str], reactor):

        checkConfiguration(options)  # fail now, not in a loop of dying workers
        self._options = options
        self._reactor = reactor
        self._stopping = False
        self._workers: dict[int, _Worker] = {}
        self._metricsPort = None
        self._ports = [self._bind(d) for d in options["smtp"] + options["smtps"]]
        self._arguments = workerArguments(argv, [port.fileno() for port in self._ports])
        self._metricsDirectory = tempfile.mkdtemp(prefix="smtprelay-metrics-")
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self._metricsDirectory)
        ProcessCollector(registry=self.registry)

    def _bind(self, description: str):
        """Open a listening socket now; workers accept from it, this process does not."""
        inner = description.removeprefix(PREFIX)
        if not inner.startswith(("tcp:", "tcp6:", "unix:")):
            raise StartupError(f"with --workers, listeners must be tcp:, tcp6: or unix: endpoints, not {description!r}")
        bound: list[Any] = []  # the port, or the failure
        factory = Factory()
        factory.noisy = False
        serverFromString(self._reactor, inner).listen(factory).addBoth(bound.append)
        if not hasattr(bound[0], "fileno"):
            raise StartupError(f"cannot listen on {description}: {bound[0].getErrorMessage()}")
        bound[0].stopReading()
        return bound[0]

    def setServiceParent(self, parent) -> None:
        useLogFormat(parent, self._options["log-format"])
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        stopOnTerminate(self._reactor)
        for index in range(self._options["workers"]):
            self._spawn(index)
        site = metricsSite(self.registry, self.readiness, self._reactor)
        d = serverFromString(self._reactor, self._options["metrics"]).listen(site)
        d.addCallback(lambda port: setattr(self, "_metricsPort", port))
        d.addErrback(
            lambda f: self.log.failure("cannot serve metrics on {endpoint}", f, endpoint=self._options["metrics"])
        )

    def _spawn(self, index: int) -> None:
        worker = _Worker(self, index)
        fds = {0: "w", 1: "r", 2: "r"}
        fds.update({port.fileno(): port.fileno() for port in self._ports})
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self._metricsDirectory}
        process = self._reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", "relay.runtime.worker", *self._arguments],
            env=environment, childFDs=fds,
        )  # fmt: skip
        worker.process, worker.pid = process, process.pid
        self._workers[index] = worker
        self.log.info("worker {worker} started (pid {pid})", worker=index, pid=process.pid)
        worker.ended.addCallback(self._ended, worker)

    def _ended(self, code: int, worker: _Worker) -> None:
        mark_process_dead(worker.pid, self._metricsDirectory)
        if self._stopping:
            return
        self.log.error("worker {worker} (pid {pid}) exited with {code}; restarting", worker=worker.index,
                       pid=worker.pid, code=code)  # fmt: skip
        self._reactor.callLater(1.0, self._spawn, worker.index)

    def readiness(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "draining"
        running = sum(1 for w in self._workers.values() if not w.ended.called)
        if running < self._options["workers"]:
            return False, f"{running} of {self._options['workers']} workers running"
        return True, "ready"

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for port in self._ports:  # new connections are refused at once
            port.stopListening()
        for worker in self._workers.values():
            if not worker.ended.called:
                worker.process.signalProcess("TERM")
        ended = DeferredList([worker.ended for worker in self._workers.values()])
        deadline = self._reactor.callLater(self._options["drain-timeout"] + 10, self._kill)
        await ended
        if deadline.active():
            deadline.cancel()
        if self._metricsPort is not None:
            await self._metricsPort.stopListening()
        shutil.rmtree(self._metricsDirectory, ignore_errors=True)

    def _kill(self) -> None:
        for worker in self._workers.values():
            if not worker.ended.called:
                self.log.warn("worker {worker} did not stop in time; killing it", worker=worker.index)
                worker.process.signalProcess("KILL")
