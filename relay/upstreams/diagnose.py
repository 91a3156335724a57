"""
C{smtprelay-admin upstream test} and the portal's "test connection": open
a session to an upstream exactly as the relay would (same code, same TLS
checks, same credentials), note what it showed, and close it without
sending mail.

    diagnosis = await diagnose(types["smtp"], url, context)
    print("\\n".join(diagnosis.lines()))   # banner, EHLO, TLS, certificate, AUTH
    diagnosis.ok                          # the relay could use it

The SMTP and LMTP types say everything (L{SetupNotes}); any other type is
opened and closed, and the outcome is all there is to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred

from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.smtp import SetupNotes

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """
    @ivar ok: a session opened (connection, TLS as the URL asks, AUTH).
    @ivar error: why not.
    @ivar notes: what the conversation showed (SMTP and LMTP types).
    """

    url: str
    ok: bool
    error: str | None
    notes: SetupNotes | None

    def lines(self) -> list[str]:
        """The diagnosis for a person: one fact a line, the verdict last."""
        shown = [f"upstream: {self.url}"]
        notes = self.notes
        if notes is not None:
            if notes.banner:
                shown.append(f"banner: {notes.banner}")
            if notes.startTLS:
                shown.append(f"STARTTLS: {notes.startTLS}")
            if notes.extensions:
                shown.append(f"EHLO: {' '.join(sorted(notes.extensions))}")
            if notes.tlsVersion:
                shown.append(f"TLS: {notes.tlsVersion} {notes.cipher or ''}".rstrip())
            check = notes.certificate
            if check is not None:
                expiry = f", expires {check.notAfter:%Y-%m-%d}" if check.notAfter else ""
                shown.append(f"certificate: {check.subject} (issuer {check.issuer}{expiry})")
                shown.append("certificate verified" if check.verified else f"certificate NOT verified: {check.reason}")
            if notes.clientCertificate:
                shown.append("client certificate: presented")
            if notes.auth is not None:
                shown.append(f"AUTH: {notes.auth}")
        shown.append("OK: the relay can deliver here" if self.ok else f"FAILED: {self.error}")
        return shown


def diagnose(kind: IUpstreamType, url: UpstreamURL, context: UpstreamContext) -> Deferred[Diagnosis]:
    """Open a session as the relay would, then close it (QUIT); never fails: the outcome is in the L{Diagnosis}."""

    async def run() -> Diagnosis:
        notes = SetupNotes() if kind.name in ("smtp", "lmtp") else None
        try:
            opening = cast(Any, kind).open(url, context, notes) if notes is not None else kind.open(url, context)
            session = await opening
        except UpstreamError as e:
            return Diagnosis(url.redacted(), False, str(e), notes)
        except Exception as e:  # a plugin's own failure
            return Diagnosis(url.redacted(), False, f"{type(e).__name__}: {e}", notes)
        await session.close()
        return Diagnosis(url.redacted(), True, None, notes)

    return Deferred.fromCoroutine(run())
