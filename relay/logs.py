"""
C{--log-format json}: one JSON object per line on standard output, for
journald, Docker or any log pipeline, instead of twistd's text lines.

Each object has C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{text}
(the rendered message) and every plain field of the event (strings,
numbers, booleans), so a transaction line arrives with C{queueId},
C{tenant}, C{result}, ... as separate keys.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO

from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.components import Componentized

__all__ = ["FORMATS", "jsonObserver", "useLogFormat"]

FORMATS = ("text", "json")
_PLAIN = (str, int, float, bool, type(None))


def _record(event: dict) -> str:
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
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
