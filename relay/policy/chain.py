"""
Running the policies in order, containing their failures.  Each policy is
named by the name it was registered under (its plugin name), in metrics and
in log lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface.interface import Method

from relay.core.envelope import ClientInfo
from relay.core.verdict import CONTINUE, Decision, Verdict, tempfail
from relay.seams.interfaces import IPolicy
from relay.seams.policy import Policy

__all__ = ["NamedPolicy", "PolicyChain"]

_HOOKS = tuple(name for name, spec in IPolicy.namesAndDescriptions() if isinstance(spec, Method))
_POLICY_FAILED = tempfail(451, "4.3.0", "Temporary policy failure, try again later")


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """A policy and the name it was registered under."""

    name: str
    policy: IPolicy


class PolicyChain:
    """
    Asks each policy in turn until one decides.

    A policy that raises, fails, answers something that is not a
    L{Verdict} or takes longer than the hook timeout tempfails the
    transaction and is logged; it never breaks the session or the process.

    @param policies: in the order they run, each with its registered name.
    @param onRefusal: called with the policy's name, the client and the
        verdict whenever a policy refuses (for metrics and logs).
    """

    log = Logger()

    def __init__(
        self,
        policies: Sequence[NamedPolicy],
        clock: IReactorTime,
        timeout: float = 30.0,
        onRefusal: Callable[[str, ClientInfo, Verdict], None] = lambda name, client, verdict: None,
    ):
        self._policies = tuple(policies)
        self._clock = clock
        self._timeout = timeout
        self._onRefusal = onRefusal
        # Per hook, only the policies that do something there: a hook left
        # as relay.plugin.Policy has it always answers CONTINUE.
        self._byHook = {
            hook: tuple(p for p in self._policies if getattr(type(p.policy), hook, None) is not getattr(Policy, hook))
            for hook in _HOOKS
        }

    def check(self, hook: str, *args) -> Verdict | Deferred[Verdict]:
        """
        Run hook C{hook} of every policy, in order, until one answers
        something other than C{CONTINUE}.

        @return: the deciding L{Verdict} (C{CONTINUE} when no policy
            objected), or a Deferred firing with it when a policy answered
            with a Deferred; the Deferred never fails.
        """
        return self._resume(iter(self._byHook[hook]), hook, args)

    def _resume(self, policies: Iterator[NamedPolicy], hook: str, args: tuple) -> Verdict | Deferred[Verdict]:
        for policy in policies:
            try:
                result = getattr(policy.policy, hook)(*args)
            except Exception:
                return self._decided(self._broken(Failure(), policy, hook), policy, args)
            if isinstance(result, Deferred):
                result.addTimeout(self._timeout, self._clock)
                result.addCallbacks(
                    self._checked,
                    self._broken,
                    callbackArgs=(policy, hook),
                    errbackArgs=(policy, hook),
                )
                return result.addCallback(self._continue, policy, policies, hook, args)
            verdict = self._checked(result, policy, hook)
            if verdict.decision is not Decision.CONTINUE:
                return self._decided(verdict, policy, args)
        return CONTINUE

    def _continue(self, verdict: Verdict, policy, policies, hook, args) -> Verdict | Deferred[Verdict]:
        if verdict.decision is not Decision.CONTINUE:
            return self._decided(verdict, policy, args)
        return self._resume(policies, hook, args)

    def _decided(self, verdict: Verdict, policy: NamedPolicy, args: tuple) -> Verdict:
        if verdict.refuses:
            self._onRefusal(policy.name, args[0], verdict)
        return verdict

    def _checked(self, result: object, policy: NamedPolicy, hook: str) -> Verdict:
        if isinstance(result, Verdict):
            return result
        self.log.error(
            "policy {policy} answered {result!r} from {hook}, not a Verdict",
            policy=policy.name,
            result=result,
            hook=hook,
        )
        return _POLICY_FAILED

    def _broken(self, failure: Failure, policy: NamedPolicy, hook: str) -> Verdict:
        self.log.failure("policy {policy} failed in {hook}", failure, policy=policy.name, hook=hook)
        return _POLICY_FAILED

    def notify(self, hook: str, *args) -> None:
        """
        Call a notification hook (C{reset}, C{disconnect}) of every policy;
        failures are logged and otherwise ignored.
        """
        for policy in self._byHook[hook]:
            try:
                result = getattr(policy.policy, hook)(*args)
            except Exception:
                self._broken(Failure(), policy, hook)
                continue
            if isinstance(result, Deferred):
                result.addErrback(self._broken, policy, hook)
