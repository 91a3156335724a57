"""
A C{--workers} child process: the relay on sockets inherited from the
parent, logging JSON records to standard output for the parent to forward.

    python -m relay.worker SMTPRELAY-OPTIONS... --inherit-fds=3,4
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from relay.tap import Options

    options = Options()
    options.parseOptions(argv)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)

    from twisted.internet import reactor

    from relay.service import RelayService, StartupError

    try:
        service = RelayService(options, reactor)
    except StartupError as e:
        print(f"smtprelay worker: {e}", file=sys.stderr)
        return 1
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
