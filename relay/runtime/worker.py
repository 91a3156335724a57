"""
A C{--workers} child process: the relay on sockets inherited from the
parent, logging JSON records to standard output for the parent to forward.

    python -m relay.runtime.worker SMTPRELAY-OPTIONS... --inherit-fds=3,4
"""

from __future__ import annotations

import sys
from typing import IO, cast

__all__ = ["main"]


LOG_INTERVAL = 0.25  # seconds between batches of log lines to the parent


def main(argv: list[str]) -> int:
    from relay.runtime.reactor import install

    reactor = install()  # before anything imports the default one

    from twisted.logger import Logger, globalLogBeginner

    from relay.runtime.tap import Options
    from relay.telemetry.logs import BatchedOutput, workerObserver

    options = Options()
    options.parseOptions(argv)
    output = BatchedOutput(sys.stdout)
    globalLogBeginner.beginLoggingTo([workerObserver(cast(IO[str], output))], redirectStandardIO=False)
    Logger().info("reactor class: {reactor}", reactor=f"{type(reactor).__module__}.{type(reactor).__qualname__}")

    from twisted.internet.task import LoopingCall

    from relay.runtime.service import RelayService, StartupError

    try:
        try:
            service = RelayService(options, reactor)
        except StartupError as e:
            print(f"smtprelay worker: {e}", file=sys.stderr)
            return 1
        LoopingCall(output.drain).start(LOG_INTERVAL, now=False)
        service.startService()
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        reactor.run()
        return 0
    finally:
        output.drain()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
