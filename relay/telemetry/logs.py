"""
C{--log-format json}: one JSON object per line on standard output, for
journald, Docker or any log pipeline, instead of twistd's text lines; and
how a C{--workers} child passes its log to the parent (L{workerObserver},
L{BatchedOutput}, L{decodeWorkerRecord}).

Each object has C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{text}
(the rendered message) and every plain field of the event (strings,
numbers, booleans), so a transaction line arrives with C{queueId},
C{tenant}, C{result}, ... as separate keys.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import IO

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, eventAsJSON, eventFromJSON, formatEvent
from twisted.python.components import Componentized

__all__ = ["FORMATS", "BatchedOutput", "decodeWorkerRecord", "jsonObserver", "useLogFormat", "workerObserver"]

FORMATS = ("text", "json")
_PLAIN = (str, int, float, bool, type(None))


def _record(event: dict) -> str:
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(timespec="milliseconds"),
        "level": event["log_level"].name if "log_level" in event else "info",
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    if "log_failure" in event:
        record["traceback"] = event["log_failure"].getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and isinstance(value, _PLAIN):
            record.setdefault(key, value)
    return json.dumps(record) + "\n"


def jsonObserver(out: IO[str] | None = None) -> FileLogObserver:
    """A log observer writing JSON lines to C{out} (standard output by default)."""
    return FileLogObserver(out or sys.stdout, _record)


def useLogFormat(parent, logFormat: str) -> None:
    """
    Called from a service's C{setServiceParent}: twistd hands the
    application itself there, and uses the log observer set on it instead of
    its own.
    """
    if logFormat == "json" and isinstance(parent, Componentized):
        parent.setComponent(ILogObserver, jsonObserver())


_RECORD_SEPARATOR = "\x1e"  # as twisted.logger.jsonFileLogObserver writes: RS, JSON, LF
_SHIPPED = ("log_format", "log_namespace", "log_time")


def _workerRecord(event: dict) -> str:
    """
    One event as a line for the parent. An event whose fields JSON can
    carry as they are (the transaction line, most others) goes as a flat
    object with its level's name: about half the cost of Twisted's
    L{eventAsJSON}, which flattens the format and encodes every value
    generically; any other (a failure, an object) goes through
    L{eventAsJSON}.
    """
    if "log_failure" not in event:
        record = {k: v for k, v in event.items() if k[:4] != "log_" or k in _SHIPPED}
        level = event.get("log_level")
        record["log_level"] = level.name if level is not None else "info"
        try:
            return _RECORD_SEPARATOR + json.dumps(record) + "\n"
        except (TypeError, ValueError):  # a value JSON cannot carry: Twisted's way, which can
            pass
    return _RECORD_SEPARATOR + eventAsJSON(event) + "\n"


def workerObserver(out: IO[str]) -> FileLogObserver:
    """The observer of a C{--workers} child: records for L{decodeWorkerRecord} in the parent."""
    return FileLogObserver(out, _workerRecord)


def decodeWorkerRecord(line: str) -> dict:
    """An event again from one line of L{workerObserver} (RS stripped), whichever form it took."""
    event = json.loads(line)
    level = event.get("log_level")
    if isinstance(level, str):
        event["log_level"] = LogLevel.levelWithName(level)
        return event
    return eventFromJSON(line)


class BatchedOutput:
    """
    A file for a log observer that passes its lines on in batches.

    A relay writes a log line per message; written and flushed one by one
    into the pipe to the C{--workers} parent, each costs a system call here
    and a wake-up of the parent.  Lines are kept until C{limit} characters
    are waiting or L{drain} is called (the worker calls it every few tenths
    of a second and when it stops), then written and flushed at once.  Safe
    to write from any thread.  A worker killed outright loses at most the
    lines of the last interval.
    """

    def __init__(self, out: IO[str], limit: int = 64 * 1024):
        self._out = out
        self._limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)
            self._size += len(text)
            if self._size >= self._limit:
                self._drainLocked()

    def flush(self) -> None:
        """Called by the observer after every line: batching, so not now."""

    def drain(self) -> None:
        """Write and flush every line waiting."""
        with self._lock:
            self._drainLocked()

    def _drainLocked(self) -> None:
        if self._lines:
            self._out.write("".join(self._lines))
            self._lines.clear()
            self._size = 0
            self._out.flush()
