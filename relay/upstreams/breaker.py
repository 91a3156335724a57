"""
Dead-upstream memory (docs/design.md §2): an upstream that failed to open
(refused connection, no greeting, TLS, AUTH or token failure) is marked
down for a back-off that doubles while it keeps failing (5 s, 10 s, ...,
5 minutes at most).  While it is down the pool tries a tenant's other
upstreams first, and one probe at a time checks it once its back-off is
over; the first session that opens marks it up again.  One per process,
shared by every tenant whose upstream has that URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from relay.core.urls import UpstreamURL

__all__ = ["DOWN_KINDS", "Breaker"]

# UpstreamError kinds that say the upstream cannot be used now ("busy" is our own cap; "mail" an answer).
DOWN_KINDS = frozenset({"connect", "timeout", "lost", "protocol", "tls", "auth", "refused", "token"})


@dataclass
class _State:
    failures: int = 0
    until: float = 0.0  # reactor seconds the back-off ends
    probing: bool = False


class Breaker:
    """
    @param onChange: called with C{(url, up)} when an upstream goes down or
        comes back (for the C{smtprelay_upstream_up} gauge).
    """

    def __init__(
        self,
        clock: IReactorTime,
        base: float = 5.0,
        maximum: float = 300.0,
        onChange: Callable[[UpstreamURL, bool], None] | None = None,
    ):
        self._clock = clock
        self._base = base
        self._maximum = maximum
        self._onChange = onChange or (lambda url, up: None)
        self._states: dict[UpstreamURL, _State] = {}

    def isDown(self, url: UpstreamURL) -> bool:
        """Marked down (its back-off may be over, but no session opened since)."""
        state = self._states.get(url)
        return state is not None and state.failures > 0

    def probeDue(self, url: UpstreamURL) -> bool:
        """Down, its back-off over, and no probe in flight: the next attempt may check it."""
        state = self._states.get(url)
        return state is not None and not state.probing and self._clock.seconds() >= state.until

    def retryIn(self, url: UpstreamURL) -> float:
        """Seconds until its back-off ends (0 when it is up or the back-off is over)."""
        state = self._states.get(url)
        return 0.0 if state is None else max(0.0, state.until - self._clock.seconds())

    def probing(self, url: UpstreamURL, flag: bool) -> None:
        """A probe of C{url} started (C{True}) or ended."""
        state = self._states.get(url)
        if state is not None:
            state.probing = flag

    def failed(self, url: UpstreamURL) -> float:
        """It failed to open: down for the next back-off, returned."""
        state = self._states.setdefault(url, _State())
        state.failures += 1
        backoff = min(self._maximum, self._base * 2 ** (state.failures - 1))
        state.until = self._clock.seconds() + backoff
        if state.failures == 1:
            self._onChange(url, False)
        return backoff

    def succeeded(self, url: UpstreamURL) -> None:
        """A session opened: up again."""
        state = self._states.pop(url, None)
        if state is not None and state.failures:
            self._onChange(url, True)
