"""
Registering plugins in a C{twisted/plugins/} module without importing them:
L{UpstreamTypePlugin} and L{PolicyPlugin} name the implementation by its
dotted path and import it only when the relay first uses it, so the plugin
module stays light (C{twistd} imports every plugin module while it rebuilds
its C{dropin.cache}).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from relay.seams.interfaces import IPolicyFactory, IUpstreamType

__all__ = ["PolicyPlugin", "UpstreamTypePlugin"]


def _load(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(import_module(module), name)


@implementer(IPlugin, IUpstreamType)
class UpstreamTypePlugin:
    """
    Registers an upstream type without importing it.

    @param name: the type's name (C{"smtp"}).
    @param schemes: the URL schemes it handles.
    @param implementation: dotted name of a class whose no-argument instance
        provides L{IUpstreamType}, e.g. C{"mypkg.upstream.QueueUpstream"}.
    @param description: one line for C{--list-plugins}.
    """

    def __init__(self, name: str, schemes: tuple[str, ...], implementation: str, description: str):
        self.name = name
        self.schemes = schemes
        self.implementation = implementation
        self.description = description
        self._loaded: IUpstreamType | None = None

    def _type(self) -> IUpstreamType:
        if self._loaded is None:
            self._loaded = _load(self.implementation)()
        return self._loaded

    def validate(self, url):
        return self._type().validate(url)

    def open(self, url, context):
        return self._type().open(url, context)

    def __getstate__(self):
        # dropin.cache pickles nothing of the plugin itself, but be safe.
        return {**self.__dict__, "_loaded": None}


@implementer(IPlugin, IPolicyFactory)
class PolicyPlugin:
    """
    Registers a policy without importing it.

    @param implementation: dotted name of a callable taking a
        L{relay.seams.policy.PolicyContext} and returning an L{IPolicy}.
    @param priority: lower runs first; the built-ins use 100 to 900.
    """

    def __init__(self, name: str, implementation: str, description: str, priority: int = 500):
        self.name = name
        self.implementation = implementation
        self.description = description
        self.priority = priority

    def makePolicy(self, context):
        return _load(self.implementation)(context)
