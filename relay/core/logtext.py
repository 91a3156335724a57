"""
Client-supplied text in log lines.

A text log line is C{key=value} fields separated by spaces, one event a
line.  A value the client chose (an AUTH user name, a HELO name, an address
with a quoted local part, a PROXY header) could end the line (CR, LF) or
pass for another field (C{"x reason=ok"}); L{logText} makes it one
unambiguous token.  JSON logs need nothing of this: their encoder escapes.
"""

from __future__ import annotations

import json
import re

__all__ = ["logText"]

_WORD = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # printable ASCII but space, " and \
MAX_SHOWN = 256  # characters of a client value shown at most


def logText(value: str | None) -> str:
    """
    A client-supplied value as one token of a text log line: unchanged when
    it is a single word of printable ASCII (no space, quote or backslash),
    otherwise a JSON string (in quotes, with every control and non-ASCII
    character escaped).  Values longer than L{MAX_SHOWN} are cut, marked
    with C{...}.  C{None} is C{-}.
    """
    if value is None:
        return "-"
    if len(value) > MAX_SHOWN:
        value = value[:MAX_SHOWN] + "..."
    if _WORD.fullmatch(value):
        return value
    return json.dumps(value)
