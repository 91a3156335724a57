"""
Discovery of the plugins installed with any distribution, through
C{twisted.plugin.getPlugins} over the C{twisted.plugins} package.
"""

from __future__ import annotations

from twisted.plugin import getPlugins

from relay.interfaces import IPolicyFactory, IUpstreamType

__all__ = ["policyFactories", "upstreamTypes"]


def _plugins(interface):
    import twisted.plugins

    return list(getPlugins(interface, twisted.plugins))


def upstreamTypes() -> dict[str, IUpstreamType]:
    """Every installed upstream type, keyed by each URL scheme it handles."""
    return {scheme: kind for kind in _plugins(IUpstreamType) for scheme in kind.schemes}


def policyFactories() -> list[IPolicyFactory]:
    """Every installed policy factory, in the order the policies run."""
    return sorted(_plugins(IPolicyFactory), key=lambda f: (f.priority, f.name))
