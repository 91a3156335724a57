"""
Registering plugins in a C{twisted/plugins/} module without importing them:
L{UpstreamTypePlugin} and L{PolicyPlugin} name the implementation by its
dotted path and import it only when the relay loads it, so the plugin
module stays light (C{twistd} imports every plugin module while it rebuilds
its C{dropin.cache}).

Loading checks the implementation against its interface
(L{conformance}); one that does not conform is refused with a
L{PluginError} naming what is missing, before it ever sees a message.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import Interface, implementer
from zope.interface import exceptions as zopeExceptions
from zope.interface.exceptions import BrokenImplementation, BrokenMethodImplementation, DoesNotImplement, Invalid
from zope.interface.verify import verifyClass, verifyObject

from relay.seams.interfaces import IPolicy, IPolicyFactory, IUpstreamType

__all__ = ["PluginError", "PolicyPlugin", "UpstreamTypePlugin", "conformance"]

MultipleInvalid: type[Invalid] = zopeExceptions.MultipleInvalid  # type: ignore[attr-defined]  # not in the stubs


class PluginError(Exception):
    """A plugin cannot be used; C{str()} is the one-line reason."""


def _why(error: Invalid) -> str:
    """A zope.interface verification error as a short reason."""
    if isinstance(error, MultipleInvalid):
        return "; ".join(_why(each) for each in getattr(error, "exceptions", ()))
    if isinstance(error, DoesNotImplement):
        return f"does not declare {error.interface.__name__} (add @implementer({error.interface.__name__}))"
    if isinstance(error, BrokenImplementation):
        return f"missing {getattr(error.name, '__name__', error.name)!r}"
    if isinstance(error, BrokenMethodImplementation):
        name = getattr(error.method, "__name__", error.method)
        return f"method {name!r} {error.mess}"
    return str(error)


def conformance(interface: type[Interface], candidate: object, isClass: bool = False) -> None:
    """
    Check that C{candidate} (an object, or a class when C{isClass}) provides
    C{interface}: every attribute and method, with compatible signatures.

    @raise PluginError: it does not, saying what is missing.
    """
    try:
        (verifyClass if isClass else verifyObject)(interface, candidate)
    except Invalid as e:
        raise PluginError(f"{interface.__name__}: {_why(e)}") from None


def _load(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise PluginError(f"cannot import {dotted}: {type(e).__name__}: {e}") from None


@implementer(IPlugin, IUpstreamType)
class UpstreamTypePlugin:
    """
    Registers an upstream type without importing it.

    @param name: the type's name (C{"smtp"}).
    @param schemes: the URL schemes it handles.
    @param implementation: dotted name of a class whose no-argument instance
        provides L{IUpstreamType} with the same C{name} and C{schemes},
        e.g. C{"mypkg.upstream.QueueUpstream"}.
    @param description: one line for C{--list-plugins}.
    """

    def __init__(self, name: str, schemes: tuple[str, ...], implementation: str, description: str):
        self.name = name
        self.schemes = tuple(schemes)
        self.implementation = implementation
        self.description = description
        self._loaded: IUpstreamType | None = None

    def load(self) -> IUpstreamType:
        """
        Import the implementation and make the type, once.

        @raise PluginError: it cannot be imported or made, does not provide
            L{IUpstreamType}, or says another name or other schemes.
        """
        if self._loaded is None:
            factory = _load(self.implementation)
            try:
                kind = factory()
            except Exception as e:
                raise PluginError(f"{self.implementation}() failed: {type(e).__name__}: {e}") from None
            conformance(IUpstreamType, kind)
            if (kind.name, tuple(kind.schemes)) != (self.name, self.schemes):
                raise PluginError(
                    f"registered as {self.name} for {'/'.join(self.schemes)}, but the implementation says "
                    f"{kind.name} for {'/'.join(kind.schemes)}"
                )
            self._loaded = kind
        return self._loaded

    def validate(self, url):
        return self.load().validate(url)

    def open(self, url, context):
        return self.load().open(url, context)

    def __getstate__(self):
        # dropin.cache pickles nothing of the plugin itself, but be safe.
        return {**self.__dict__, "_loaded": None}


@implementer(IPlugin, IPolicyFactory)
class PolicyPlugin:
    """
    Registers a policy without importing it.

    @param implementation: dotted name of a class (usually a subclass of
        L{relay.plugin.Policy}) whose instances provide L{IPolicy}, made
        with the L{relay.plugin.PolicyContext} as its one argument.
    @param priority: lower runs first; the built-ins use 100 to 900.
    """

    def __init__(self, name: str, implementation: str, description: str, priority: int = 500):
        self.name = name
        self.implementation = implementation
        self.description = description
        self.priority = priority

    def load(self) -> type:
        """
        Import the implementation and check its class.

        @raise PluginError: it cannot be imported, or its instances would
            not provide L{IPolicy}.
        """
        policyClass = _load(self.implementation)
        conformance(IPolicy, policyClass, isClass=True)
        return policyClass

    def makePolicy(self, context):
        return self.load()(context)
