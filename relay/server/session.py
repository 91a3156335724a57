"""
What the relay does with each command of one client connection: the
semantics of docs/design.md §2 and §3, independent of how bytes are framed on the
wire (that is L{relay.server.protocol}).

Every command handler returns a L{Reply}, or a Deferred firing with one when
it has to wait for a policy, the credential checker or the upstream.
"""

from __future__ import annotations

import re
from functools import partial
from typing import cast

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.imap4 import IllegalClientResponse
from twisted.mail.interfaces import IChallengeResponse

from relay.core.address import AddressError, Recipient, parseParameters, parsePath, parseRecipient
from relay.core.envelope import ClientInfo, Transaction, newQueueId
from relay.core.logtext import logText
from relay.core.maybe import settle, then
from relay.core.reply import Reply
from relay.core.tenant import Tenant
from relay.core.verdict import Verdict
from relay.seams.upstream import UpstreamError
from relay.server.context import ServerContext
from relay.server.dataframe import DataError
from relay.server.guard import AUTH_LOCKED
from relay.server.message import UPSTREAM_LOST, MessageStream
from relay.server.received import traceHeader
from relay.server.sasl import MECHANISMS, decodeResponse, encodeChallenge
from relay.server.throttle import Throttle
from relay.upstreams.pool import Lease, Route

__all__ = ["RelaySession"]

OK = Reply.of(250, "2.0.0", "Ok")
MAIL_OK = Reply.of(250, "2.1.0", "Ok")
NEEDS_SMTPUTF8 = Reply.of(553, "5.6.7", "Non-ASCII addresses need SMTPUTF8 (RFC 6531)")
FINAL_UNKNOWN = Reply.of(
    451,
    "4.4.7",
    "The upstream did not answer the end of data in time: the outcome is unknown, it may have been delivered",
)
MAX_ENVID = 100  # RFC 3461 §4.4
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")  # RFC 3461 §4
_NOTIFY = re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*", re.I)
_ORCPT = re.compile(r"[A-Za-z0-9-]+;.+")
BYE = Reply.of(221, "2.0.0", "Bye")
UNKNOWN = Reply.of(500, "5.5.2", "Error: command not recognized")
NO_PARAMETERS = Reply.of(501, "5.5.4", "Syntax error: no parameters allowed")
NEED_HELO = Reply.of(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_EHLO = Reply.of(503, "5.5.1", "Error: send EHLO first")
NEED_MAIL = Reply.of(503, "5.5.1", "Error: need MAIL command")
NESTED_MAIL = Reply.of(503, "5.5.1", "Error: nested MAIL command")
NO_RECIPIENTS = Reply.of(554, "5.5.1", "Error: no valid recipients")
AUTH_REQUIRED = Reply.of(530, "5.7.0", "Authentication required")
AUTH_DONE = Reply.of(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply.of(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
AUTH_NEEDS_TLS = Reply.of(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_MECHANISM = Reply.of(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply.of(501, "5.0.0", "Authentication cancelled")
AUTH_MALFORMED = Reply.of(501, "5.5.2", "Malformed authentication response")
AUTH_FAILED = Reply.of(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply.of(454, "4.7.0", "Temporary authentication failure")
AUTH_OK = Reply.of(235, "2.7.0", "Authentication successful")
TLS_UNAVAILABLE = Reply.of(502, "5.5.1", "Error: STARTTLS not available")
TLS_ACTIVE = Reply.of(503, "5.5.1", "Error: TLS already active")
TLS_IN_TRANSACTION = Reply.of(503, "5.5.1", "Error: STARTTLS not permitted during a mail transaction")
TLS_GO = Reply.of(220, "2.0.0", "Ready to start TLS")
NO_UPSTREAM = Reply.of(451, "4.4.1", "No upstream available, try again later")
GO_AHEAD = Reply.of(354, None, "End data with <CR><LF>.<CR><LF>")
VRFY = Reply.of(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN = Reply.of(502, "5.5.1", "Error: EXPN not supported")
HELP = Reply.of(214, "2.0.0", "See RFC 5321")
TOO_BIG = Reply.of(552, "5.3.4", "Message size exceeds fixed limit")
CLIENT_GONE = Reply.of(421, "4.4.2", "Client disconnected")
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Too many recipients for one message, send the rest in another")
# What a framing error found in DATA is answered, and the rule it counts under.
DATA_ERRORS = {
    DataError.BARE_LINE_END: (Reply.of(550, "5.6.0", "Message refused: bare CR or LF (RFC 5321 §2.3.8)"), "framing"),
    DataError.NUL: (Reply.of(550, "5.6.0", "Message refused: NUL character"), "framing"),
    DataError.LINE_TOO_LONG: (Reply.of(550, "5.6.0", "Message refused: line longer than 1000 octets"), "framing"),
    DataError.TOO_BIG: (TOO_BIG, "size"),
}
NO_REPLY = Reply.of(451, "4.3.0", "Upstream gave no final reply; not delivered, try again")

_PATH = r'(<(?:[^<>"]|"(?:[^"\\]|\\.)*")*>)(.*)'
_MAIL = re.compile(r"FROM:\s*" + _PATH, re.I | re.S)
_RCPT = re.compile(r"TO:\s*" + _PATH, re.I | re.S)
_BODY_TYPES = ("7BIT", "8BITMIME")


def _syntax(what: str) -> Reply:
    return Reply.of(501, "5.5.4", f"Syntax: {what}")


def _checkRcptParameters(parameters: dict[str, str | None]) -> Reply | None:
    """RCPT takes the DSN parameters (RFC 3461 §4.1, §4.2), nothing else."""
    for key, value in parameters.items():
        if key == "NOTIFY":
            if value is None or not _NOTIFY.fullmatch(value):
                return Reply.of(501, "5.5.4", "NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY (RFC 3461)")
        elif key == "ORCPT":
            if value is None or not _ORCPT.fullmatch(value) or len(value) > 500:
                return Reply.of(501, "5.5.4", "ORCPT must be addr-type;xtext (RFC 3461)")
        else:
            return Reply.of(555, "5.5.4", f"Unsupported RCPT parameter {key}")
    return None


MIXED = Reply.of(451, "4.5.0", "Delivered to some recipients only; try again for the others")


def _noUpstream(error: UpstreamError) -> Reply:
    """
    What every RCPT is told when no upstream took MAIL, from the last
    upstream's failure: its own refusal of MAIL (its code and text); the
    token failure's C{454 4.7.0} or C{451 4.4.1}; C{454 4.7.0} with the
    upstream's answer when it refused our login (Basic Auth turned off,
    say); else L{NO_UPSTREAM}.
    """
    if error.kind in ("mail", "token") and error.reply is not None:
        return error.reply
    if error.kind == "auth" and error.reply is not None:
        return Reply.of(454, "4.7.0", f"The upstream refused the relay's login: {error.reply.summary}")
    return NO_UPSTREAM


def finalReply(replies: list[Reply], queueId: str) -> Reply:
    """
    The one reply the client gets for the upstream's end-of-data replies
    (one per message, or one per recipient for LMTP): success only if every
    recipient succeeded; when some did, the first temporary failure, or
    L{MIXED} (never a 5xx: a copy was delivered); when none did, the first
    temporary failure (so the client retries), else the first permanent
    one.  The queue id is appended.
    """
    if not replies:
        reply = NO_REPLY
    else:
        failed = [r for r in replies if not r.positive]
        transient = next((r for r in failed if r.transient), None)
        if not failed:
            reply = replies[0]
        elif len(failed) < len(replies):
            reply = transient or MIXED
        else:
            reply = transient or failed[0]
    return reply.withText(*reply.lines[:-1], f"{reply.lines[-1]} (queue id {queueId})")


class RelaySession:
    """
    The state of one client connection: greeting, TLS, authentication and
    the current transaction with its upstream session.
    """

    log = Logger()

    def __init__(self, context: ServerContext, client: ClientInfo, throttle: Throttle, secure: bool):
        self._ctx = context
        self.client = client
        self._throttle = throttle
        self._secure = secure
        self._greeted = False
        self._closed = False
        self._sasl: tuple[str, IChallengeResponse] | None = None  # during AUTH
        self._networkTenant = None  # the tenant of a --no-auth network the client is in
        self.transactions = 0
        self._transaction: Transaction | None = None
        self._route: Route | None = None  # from MAIL: the tenant's upstreams for this transaction
        self._opening: list[Deferred[None]] | None = None  # while MAIL goes upstream: RCPTs waiting for it
        self._upstream: Lease | None = None  # once an upstream took MAIL
        self._refusal: Reply | None = None  # no upstream took MAIL: every RCPT gets this
        self._rcptsInFlight = 0
        self._reported = False
        self._stream: MessageStream | None = None

    # -- connection ---------------------------------------------------------

    def greeting(self) -> Reply | Deferred[Reply]:
        """
        The greeting, after the connect policies (anything but 220 closes).
        A client in a tenant's C{--no-auth} network acts as that tenant from
        here on, without AUTH.
        """
        self._networkTenant = self.client.tenant = self._ctx.directory.tenantForAddress(self.client.address)
        return then(self._ctx.guard.locked(self.client.address), self._greet)

    def _greet(self, locked: bool) -> Reply | Deferred[Reply]:
        if locked:
            self._ctx.reporter.refused("auth-failures", self.client, AUTH_LOCKED)
            return AUTH_LOCKED
        ready = Reply.of(220, None, f"{self._ctx.hostname} ESMTP smtprelay")
        return then(self._ctx.policies.check("connect", self.client), lambda v: v.refusal if v.refuses else ready)

    def tlsStarted(self) -> None:
        """TLS is starting; RFC 3207 §4.2: forget everything learnt before it."""
        self._secure = True
        self._greeted = False
        self.client.helo = None
        self.client.esmtp = False
        self.client.tenant = self._networkTenant
        self.client.username = None

    @property
    def maxMessageSize(self) -> int:
        """The SIZE limit for this client: the relay's, or its tenant's if lower."""
        tenant = self.client.tenant
        if tenant is not None and tenant.maxSize:
            return min(tenant.maxSize, self._ctx.maxMessageSize)
        return self._ctx.maxMessageSize

    @property
    def inTransaction(self) -> bool:
        """Between MAIL FROM and the end of the transaction."""
        return self._transaction is not None

    def connectionLost(self) -> None:
        """The client went away: abort any transaction in flight."""
        self._closed = True
        if self._stream is not None and self._transaction is not None:
            self._report(self._transaction, CLIENT_GONE, aborted=True)
            self._endTransaction(reusable=False)
        else:
            self._endTransaction(reusable=True)
        self._ctx.policies.notify("disconnect", self.client)

    # -- commands -----------------------------------------------------------

    def command(self, verb: str, arg: str) -> Reply | Deferred[Reply]:
        """Handle one command line, C{verb} upper case."""
        handler = getattr(self, "do_" + verb, None)
        return UNKNOWN if handler is None else handler(arg)

    def do_EHLO(self, arg: str) -> Reply:
        if not arg:
            return _syntax("EHLO hostname")
        self._hello(arg, esmtp=True)
        keywords = ["PIPELINING", f"SIZE {self.maxMessageSize}", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
        if self._ctx.tls is not None and not self._secure:
            keywords.append("STARTTLS")
        if self._secure or self._ctx.allowInsecureAuth:
            keywords.append("AUTH " + " ".join(MECHANISMS))
        return Reply.of(250, None, f"{self._ctx.hostname} Hello [{self.client.address}]", *keywords)

    def do_HELO(self, arg: str) -> Reply:
        if not arg:
            return _syntax("HELO hostname")
        self._hello(arg, esmtp=False)
        return Reply.of(250, None, self._ctx.hostname)

    def _hello(self, name: str, esmtp: bool) -> None:
        self._endTransaction(reusable=True)
        self._greeted = True
        self.client.helo = name
        self.client.esmtp = esmtp

    def do_STARTTLS(self, arg: str) -> Reply:
        if arg:
            return NO_PARAMETERS
        if self._secure:
            return TLS_ACTIVE
        if self._ctx.tls is None:
            return TLS_UNAVAILABLE
        if not self._greeted:
            return NEED_EHLO
        if self._transaction is not None:
            return TLS_IN_TRANSACTION
        return TLS_GO

    def do_AUTH(self, arg: str) -> Reply | Deferred[Reply]:
        if not self._greeted:  # after HELO too, as Postfix accepts it
            return NEED_HELO
        if self.client.tenant is not None:
            return AUTH_DONE
        if self._transaction is not None:
            return AUTH_IN_TRANSACTION
        if not (self._secure or self._ctx.allowInsecureAuth):
            return AUTH_NEEDS_TLS
        mechanism, _, initial = arg.partition(" ")
        factory = MECHANISMS.get(mechanism.upper())
        if factory is None:
            return AUTH_MECHANISM
        self._sasl = (mechanism.upper(), factory())
        challenge = self._sasl[1].getChallenge()
        if initial:
            return self.authResponse(initial.strip().encode("ascii"))
        return Reply.of(334, None, encodeChallenge(challenge))

    def authResponse(self, line: bytes) -> Reply | Deferred[Reply]:
        """A line answering our 334 challenge."""
        assert self._sasl is not None, "only in AUTH mode"
        mechanism, challenger = self._sasl
        if line == b"*":
            self._sasl = None
            return AUTH_CANCELLED
        try:
            challenger.setResponse(decodeResponse(line))
        except (ValueError, IllegalClientResponse):
            self._sasl = None
            return AUTH_MALFORMED
        if challenger.moreChallenges():
            return Reply.of(334, None, encodeChallenge(challenger.getChallenge()))
        self._sasl = None
        return Deferred.fromCoroutine(self._authenticate(mechanism, cast(IUsernamePassword, challenger)))

    def _tenantFor(self, avatarId: str | bytes):
        """
        The tenant a checker's avatar ID stands for: a tenant name, or a
        login of the store (so that stock twisted.cred checkers work).
        """
        name = avatarId.decode("utf-8", "replace") if isinstance(avatarId, bytes) else avatarId
        directory = self._ctx.directory
        login = directory.login(name)
        return directory.tenant(name) or (directory.tenant(login.tenant) if login else None)

    async def _authenticate(self, mechanism: str, credentials: IUsernamePassword) -> Reply:
        """
        Check the credentials when it is this address's turn (one attempt
        at a time per address, see L{ConnectionGuard.authTurn}), unless the
        address is locked out by then.
        """
        address = self.client.address
        await self._ctx.guard.authTurn(address)
        try:
            if self._closed:
                return AUTH_TEMPORARY  # nobody to answer
            if await settle(self._ctx.guard.locked(address)):
                self._ctx.reporter.refused("auth-failures", self.client, AUTH_LOCKED)
                return AUTH_LOCKED
            return await self._verify(mechanism, credentials)
        finally:
            self._ctx.guard.authDone(address)

    async def _verify(self, mechanism: str, credentials: IUsernamePassword) -> Reply:
        username = credentials.username.decode("utf-8", "replace")
        try:
            avatarId = cast("str | bytes", await self._ctx.checker.requestAvatarId(credentials))
        except UnauthorizedLogin:
            return await self._authFailed(mechanism, username, "bad credentials")
        except Exception:
            self.log.failure("credential check failed for {username}", username=logText(username))
            return AUTH_TEMPORARY
        tenant = self._tenantFor(avatarId)
        if tenant is None or not tenant.active:
            return await self._authFailed(mechanism, username, "tenant missing or suspended")
        self.client.tenant, self.client.username = tenant, username
        verdict = await settle(self._ctx.policies.check("auth", self.client, username))
        if verdict.refuses:
            self.client.tenant, self.client.username = self._networkTenant, None
            if verdict.refusal.code == 535:
                return await self._authFailed(mechanism, username, "refused by policy")
            return verdict.refusal
        self._ctx.reporter.auth(mechanism, True)
        self.log.info(
            "{session} authenticated {username} as tenant {tenant}",
            session=self.client.sessionId,
            username=logText(username),
            tenant=tenant.name,
        )
        return AUTH_OK

    async def _authFailed(self, mechanism: str, username: str, why: str) -> Reply:
        """
        Count and log the failure; answer after a delay that grows with the
        address's recent failures, or lock the address out (421) when it has
        used them up.
        """
        self._ctx.reporter.auth(mechanism, False)
        # One stable line per failure, with the client address (fail2ban).
        self.log.warn(
            "smtprelay auth failed: client={ip} user={username} reason={why}",
            ip=self.client.address,
            username=logText(username),
            why=why,
        )
        delay = await settle(self._ctx.guard.authFailed(self.client.address))
        if delay is None:
            self._ctx.reporter.refused("auth-failures", self.client, AUTH_LOCKED)
            return AUTH_LOCKED
        await deferLater(self._ctx.reactor, delay)
        return AUTH_FAILED

    def do_MAIL(self, arg: str) -> Reply | Deferred[Reply]:
        if not self._greeted:
            return NEED_HELO
        if self.client.tenant is None:
            return AUTH_REQUIRED
        if self._transaction is not None:
            return NESTED_MAIL
        m = _MAIL.fullmatch(arg)
        if m is None or (m.group(2) and not m.group(2).startswith(" ")):
            return _syntax("MAIL FROM:<address> [parameters]")
        try:
            parameters = parseParameters(m.group(2))
        except AddressError as e:
            return Reply.of(501, "5.5.4", f"Syntax error in parameters: {e}")
        problem = self._checkMailParameters(parameters)
        if problem is not None:
            return problem
        utf8 = "SMTPUTF8" in parameters
        if not (utf8 or m.group(1).isascii()):
            return NEEDS_SMTPUTF8
        try:
            sender = parsePath(m.group(1), allowNull=True, utf8=utf8)
        except AddressError as e:
            return Reply.of(501, "5.1.7", f"Bad sender address syntax: {e}")
        self._transaction = Transaction(newQueueId(), sender, parameters)
        self._reported = False
        self.transactions += 1
        return then(
            self._ctx.policies.check("mailFrom", self.client, self._transaction),
            partial(self._mailChecked, self.client.tenant, self._transaction),
        )

    def _checkMailParameters(self, parameters: dict[str, str | None]) -> Reply | None:
        for key, value in parameters.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return Reply.of(501, "5.5.4", "Syntax error in SIZE parameter")
                if int(value) > self.maxMessageSize:
                    self._ctx.reporter.refused("size", self.client, TOO_BIG)
                    return TOO_BIG
            elif key == "BODY":
                if (value or "").upper() not in _BODY_TYPES:
                    return Reply.of(501, "5.5.4", "Unsupported BODY type")
            elif key == "SMTPUTF8":
                if value is not None:
                    return Reply.of(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "RET":
                if (value or "").upper() not in ("FULL", "HDRS"):
                    return Reply.of(501, "5.5.4", "RET must be FULL or HDRS (RFC 3461)")
            elif key == "ENVID":
                if value is None or len(value) > MAX_ENVID or not _XTEXT.fullmatch(value):
                    return Reply.of(501, "5.5.4", "ENVID must be xtext of at most 100 characters (RFC 3461)")
            elif key != "AUTH":  # RFC 4954 §5: accepted, not passed on
                return Reply.of(555, "5.5.4", f"Unsupported parameter {key}")
        return None

    def _mailChecked(self, tenant: Tenant, transaction: Transaction, verdict: Verdict) -> Reply:
        """
        The policies passed MAIL: the relay answers it (docs/design.md §2)
        and starts opening an upstream session while the client goes on; MAIL
        goes upstream with the first RCPT.
        """
        if self._transaction is not transaction:  # the client left meanwhile
            return verdict.refusal if verdict.refuses else MAIL_OK
        if verdict.refuses:
            return self._finishTransaction(transaction, verdict.refusal)
        self._route = self._ctx.upstreams.route(tenant)
        return MAIL_OK

    def _finishTransaction(self, transaction: Transaction, reply: Reply, reusable: bool = True) -> Reply:
        """
        The transaction ends with this reply: report it, release the
        upstream.  Nothing to do if it already ended (the client left).
        """
        if self._transaction is transaction:
            self._report(transaction, reply)
            self._endTransaction(reusable)
        return reply

    def _upstreamBroke(self, transaction: Transaction, upstream: Lease, error: UpstreamError) -> Reply:
        """The upstream failed mid-transaction: 451 4.4.2, the transaction ends."""
        self._ctx.reporter.upstreamError(upstream.upstreamType, error.kind)
        return self._finishTransaction(transaction, UPSTREAM_LOST, reusable=False)

    def do_RCPT(self, arg: str) -> Reply | Deferred[Reply]:
        transaction = self._transaction
        if transaction is None or self._route is None:
            return NEED_MAIL
        m = _RCPT.fullmatch(arg)
        if m is None or (m.group(2) and not m.group(2).startswith(" ")):
            return _syntax("RCPT TO:<address> [parameters]")
        try:
            parameters = parseParameters(m.group(2))
        except AddressError as e:
            return Reply.of(501, "5.5.4", f"Syntax error in parameters: {e}")
        problem = _checkRcptParameters(parameters)
        if problem is not None:
            return problem
        if not (transaction.utf8 or m.group(1).isascii()):
            return NEEDS_SMTPUTF8
        try:
            recipient = parseRecipient(m.group(1), parameters, utf8=transaction.utf8)
        except AddressError as e:
            return Reply.of(501, "5.1.3", f"Bad recipient address syntax: {e}")
        if len(transaction.recipients) + self._rcptsInFlight >= self._ctx.maxRecipients:
            # RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
            return self._recipientRefused(TOO_MANY_RECIPIENTS)
        self._rcptsInFlight += 1
        return Deferred.fromCoroutine(self._rcpt(transaction, recipient))

    async def _rcpt(self, transaction: Transaction, recipient: Recipient) -> Reply:
        try:
            verdict = await settle(self._ctx.policies.check("rcptTo", self.client, transaction, recipient))
            if verdict.refuses:
                return self._recipientRefused(verdict.refusal)
            try:
                reply = await self._sendRecipient(transaction, recipient)
            except UpstreamError as e:
                upstream = self._upstream
                if upstream is None or self._transaction is not transaction:
                    return UPSTREAM_LOST
                return self._upstreamBroke(transaction, upstream, e)
        finally:
            self._rcptsInFlight -= 1
        if reply.positive and self._transaction is transaction:
            transaction.recipients.append(recipient)
            return reply
        return self._recipientRefused(reply)

    async def _sendRecipient(self, transaction: Transaction, recipient: Recipient) -> Reply:
        """
        RCPT upstream.  The first one begins the transaction there (MAIL
        with it, with failover, see L{relay.upstreams.pool.Route}); one sent
        meanwhile (the client pipelines) waits for that.  When no upstream
        took MAIL, every RCPT gets that reply.
        """
        while self._opening is not None:
            waiter: Deferred[None] = Deferred()
            self._opening.append(waiter)
            await waiter
        if self._transaction is not transaction:
            return UPSTREAM_LOST
        if self._refusal is not None:
            return self._refusal
        if self._upstream is not None:
            return await self._upstream.rcptTo(str(recipient), dict(recipient.parameters))
        route = self._route
        assert route is not None, "MAIL began the route"
        self._opening = []
        try:
            return await self._begin(transaction, route, recipient)
        finally:
            self._opened()

    def _opened(self) -> None:
        """The transaction's state upstream is known (begun, or refused): RCPTs sent meanwhile go on with it."""
        waiting, self._opening = self._opening, None
        for each in waiting or ():
            each.callback(None)

    async def _begin(self, transaction: Transaction, route: Route, recipient: Recipient) -> Reply:
        sender = "" if transaction.sender is None else str(transaction.sender)
        try:
            opening = await route.start(sender, transaction.parameters, str(recipient), dict(recipient.parameters))
        except UpstreamError as e:
            self.log.warn(
                "{queueId} no upstream took MAIL for {tenant}: {error}",
                queueId=transaction.queueId,
                tenant=self.client.tenant.name if self.client.tenant else "-",
                error=e,
            )
            refused = _noUpstream(e)
            return self._refuseTransaction(transaction, refused)
        if self._transaction is not transaction:  # the client left meanwhile
            opening.rcpt.addErrback(lambda _: None)
            self._ctx.upstreams.release(opening.lease, reusable=True)
            return UPSTREAM_LOST
        if not opening.mail.positive:
            opening.rcpt.addErrback(lambda _: None)
            self._ctx.upstreams.release(opening.lease, reusable=True)
            return self._refuseTransaction(transaction, opening.mail)
        self._upstream = opening.lease
        self._opened()  # later RCPTs go up now, pipelined behind this one
        return await opening.rcpt

    def _refuseTransaction(self, transaction: Transaction, reply: Reply) -> Reply:
        """No upstream took MAIL: this RCPT and every later one get C{reply}; the outcome is reported now."""
        if self._transaction is transaction:
            self._refusal = reply
            self._report(transaction, reply)
        return reply

    def _recipientRefused(self, reply: Reply) -> Reply:
        tenant = self.client.tenant.name if self.client.tenant is not None else "-"
        self._ctx.reporter.metrics.recipients.labels(tenant, "tempfailed" if reply.transient else "rejected").inc()
        return reply

    def do_DATA(self, arg: str) -> Reply | Deferred[Reply]:
        """Our 354 at once (docs/design.md §2): the upstream's answer to DATA is looked at after the dot."""
        if arg:
            return NO_PARAMETERS
        transaction, upstream = self._transaction, self._upstream
        if transaction is None:
            return NEED_MAIL
        if not transaction.recipients or upstream is None:
            return NO_RECIPIENTS
        transaction.dataStarted = self._ctx.reactor.seconds()
        ready = upstream.data()
        trace = traceHeader(self.client, transaction, self._ctx.hostname, self._ctx.reactor.seconds())
        self._stream = MessageStream(
            self.client,
            transaction,
            upstream,
            self._ctx.policies,
            trace,
            self._throttle,
            self._ctx.reactor,
            self._ctx.upstreamTimeout,
            ready,
        )
        return GO_AHEAD

    def messageData(self, content: bytes) -> None:
        """Message bytes between our 354 and the final dot, un-dot-stuffed."""
        assert self._stream is not None, "after our 354"
        self._stream.write(content)

    def endOfData(self, error: DataError | None) -> Deferred[Reply]:
        """The final dot arrived; C{error} is what the framing check found."""
        transaction, upstream, stream = self._transaction, self._upstream, self._stream
        assert transaction is not None and upstream is not None and stream is not None, "after our 354"
        return Deferred.fromCoroutine(self._endOfData(transaction, upstream, stream, error))

    async def _endOfData(
        self, transaction: Transaction, upstream: Lease, stream: MessageStream, error: DataError | None
    ) -> Reply:
        if error is not None:
            # The framing was refused: no policy needs to see the rest.
            reply, rule = DATA_ERRORS[error]
            self._ctx.reporter.refused(rule, self.client, reply)
            stream.refuse(reply)
        await stream.finish()
        refusal = stream.refusal
        if stream.upstreamFailure is not None:
            self._ctx.reporter.upstreamError(upstream.upstreamType, stream.upstreamFailure)
        if refusal is None:
            verdict = await settle(self._ctx.policies.check("endOfData", self.client, transaction))
            refusal = verdict.refusal if verdict.refuses else None
        if refusal is not None:
            # A refusal of DATA by the upstream leaves its session usable; anything else was streamed: abort.
            reply = finalReply([refusal], transaction.queueId)
            return self._finishTransaction(transaction, reply, reusable=stream.dataRefused)
        stream.stop()
        try:
            replies = await upstream.end()
        except UpstreamError as e:
            if e.kind != "timeout":
                return finalReply([self._upstreamBroke(transaction, upstream, e)], transaction.queueId)
            self.log.warn(
                "{queueId} timeout: no final reply from {upstream}: {error}; the outcome is unknown",
                queueId=transaction.queueId,
                upstream=upstream.peer,
                error=e,
            )
            self._ctx.reporter.upstreamError(upstream.upstreamType, e.kind)
            reply = finalReply([FINAL_UNKNOWN], transaction.queueId)
            return self._finishTransaction(transaction, reply, reusable=False)
        return self._finishTransaction(transaction, finalReply(replies, transaction.queueId))

    def _report(self, transaction: Transaction, reply: Reply, aborted: bool = False) -> None:
        """Count and log the transaction's outcome, once."""
        if self._reported:
            return
        self._reported = True
        started = transaction.dataStarted
        seconds = 0.0 if started is None else self._ctx.reactor.seconds() - started
        peer = self._upstream.peer if self._upstream is not None else None
        self._ctx.reporter.transaction(self.client, transaction, reply, peer, seconds, aborted)

    def abortTransaction(self) -> None:
        """Drop the transaction (the client broke the protocol)."""
        self._endTransaction(reusable=False)

    def do_RSET(self, arg: str) -> Reply:
        if arg:
            return NO_PARAMETERS
        self._endTransaction(reusable=True)
        return OK

    def do_NOOP(self, arg: str) -> Reply:
        return OK

    def do_QUIT(self, arg: str) -> Reply:
        return BYE

    def do_VRFY(self, arg: str) -> Reply:
        return VRFY

    def do_EXPN(self, arg: str) -> Reply:
        return EXPN

    def do_HELP(self, arg: str) -> Reply:
        return HELP

    def _endTransaction(self, reusable: bool) -> None:
        """Forget the current transaction and hand its upstream session back."""
        transaction, upstream, stream, route = self._transaction, self._upstream, self._stream, self._route
        self._transaction = self._upstream = self._stream = self._route = self._refusal = None
        if stream is not None:
            stream.stop()
        if upstream is not None:
            self._ctx.upstreams.release(upstream, reusable)
        elif route is not None:
            route.cancel()
        if transaction is not None:
            self._ctx.policies.notify("reset", self.client, transaction)
