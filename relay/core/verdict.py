"""
What a policy hook answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.core.reply import Reply

__all__ = ["CONTINUE", "Verdict", "accept", "reject", "tempfail"]


class Decision(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Verdict:
    """
    A policy's answer to one hook.

    @ivar decision: L{Decision.CONTINUE} (no objection; ask the next policy),
        L{Decision.ACCEPT} (no objection; skip the remaining policies for this
        hook), L{Decision.REJECT} (refuse permanently, 5xx) or
        L{Decision.TEMPFAIL} (refuse for now, 4xx: the client will retry).
    @ivar reply: for REJECT and TEMPFAIL, what the client is told.
    """

    decision: Decision
    reply: Reply | None = None

    @property
    def refuses(self) -> bool:
        return self.decision in (Decision.REJECT, Decision.TEMPFAIL)

    @property
    def refusal(self) -> Reply:
        """The reply of a REJECT or TEMPFAIL verdict (C{ValueError} for the others)."""
        if self.reply is None:
            raise ValueError(f"a {self.decision.value} verdict has no reply")
        return self.reply


CONTINUE = Verdict(Decision.CONTINUE)
"""No objection; the next policy is asked."""

_ACCEPT = Verdict(Decision.ACCEPT)


def accept() -> Verdict:
    """No objection, and the remaining policies are not asked for this hook."""
    return _ACCEPT


def reject(code: int = 550, enhanced: str = "5.7.1", text: str = "Message refused by policy") -> Verdict:
    """
    Refuse permanently.

    @param code: a 5xx reply code.
    @param enhanced: the RFC 3463 status code, such as C{"5.7.1"}.
    @param text: one line for the client; it reaches the sender's bounce.
    """
    if not 500 <= code <= 599:
        raise ValueError("reject() needs a 5xx code")
    return Verdict(Decision.REJECT, Reply.of(code, enhanced, text))


def tempfail(code: int = 451, enhanced: str = "4.7.1", text: str = "Try again later") -> Verdict:
    """
    Refuse for now; the client keeps the message and retries.

    @param code: a 4xx reply code.
    """
    if not 400 <= code <= 499:
        raise ValueError("tempfail() needs a 4xx code")
    return Verdict(Decision.TEMPFAIL, Reply.of(code, enhanced, text))
