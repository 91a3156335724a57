"""
Capturing the log events emitted during a block of a unit test.
"""

from __future__ import annotations

from twisted.logger import globalLogPublisher

__all__ = ["Events"]


class Events:
    """C{with Events() as events:} collects every log event emitted inside the block."""

    def __enter__(self) -> list[dict]:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        return self.events

    def __exit__(self, *exc) -> None:
        globalLogPublisher.removeObserver(self.events.append)
