"""
Discovery of the plugins installed with any distribution, through
C{twisted.plugin.getPlugins} over the C{twisted.plugins} package.

A plugin module that fails to import is not dropped silently: its name and
error are collected in L{Discovery.problems}, which the relay logs at start
and C{--list-plugins} prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import packages_distributions, version

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.logger import globalLogPublisher
from twisted.plugin import getCache, getPlugins
from twisted.python.modules import getModule

from relay.seams.interfaces import IPolicyFactory, IUpstreamType

__all__ = ["Discovery", "discover", "policyFactories", "upstreamTypes"]


def _brokenModule(failure) -> str:
    """The plugin module a failure came from, from its traceback."""
    for frame in reversed(failure.frames):
        path = frame[1].replace("\\", "/")
        if "/twisted/plugins/" in path:
            return path.rsplit("/", 1)[-1].removesuffix(".py")
    return "unknown plugin module"


def _unloadable() -> list[str]:
    """
    Plugin modules that are on disk but not in Twisted's plugin cache, with
    the error importing them gives.  (Twisted logs such an error only the
    first time it meets the module, then leaves it out of the cache.)
    """
    import twisted.plugins

    cached = getCache(twisted.plugins)
    problems = []
    for module in getModule("twisted.plugins").iterModules():
        key = module.name.rsplit(".", 1)[-1]
        if key in cached:
            continue
        try:
            module.load()
        except Exception as e:
            problems.append(f"{key}: {type(e).__name__}: {e}")
    return problems


def _collect(interface, problems: list[str]) -> list:
    """getPlugins, with every failure it logs turned into a problem line."""
    import twisted.plugins

    def observe(event):
        failure = event.get("log_failure")
        if failure is not None:
            problems.append(f"{_brokenModule(failure)}: {failure.type.__name__}: {failure.getErrorMessage()}")

    globalLogPublisher.addObserver(observe)
    try:
        return list(getPlugins(interface, twisted.plugins))
    finally:
        globalLogPublisher.removeObserver(observe)


@dataclass
class Discovery:
    """
    What is installed: upstream types, policy factories, and the checker
    factories that take a user name and password (SMTP AUTH PLAIN/LOGIN).
    """

    upstreamTypes: list = field(default_factory=list)
    policies: list = field(default_factory=list)
    checkers: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def discover() -> Discovery:
    found = Discovery()
    found.upstreamTypes = _collect(IUpstreamType, found.problems)
    found.policies = sorted(_collect(IPolicyFactory, found.problems), key=lambda f: (f.priority, f.name))
    found.checkers = [c for c in _collect(ICheckerFactory, found.problems) if IUsernamePassword in c.credentialInterfaces]
    found.problems = sorted(set(found.problems + _unloadable()))
    return found


def upstreamTypes() -> dict:
    """Every installed upstream type, keyed by each URL scheme it handles."""
    return {scheme: kind for kind in _collect(IUpstreamType, []) for scheme in kind.schemes}


def policyFactories() -> list:
    """Every installed policy factory, in the order the policies run."""
    return discover().policies


def origin(plugin) -> str:
    """Where a plugin comes from: its implementation and distribution."""
    dotted = getattr(plugin, "implementation", None) or type(plugin).__module__ + "." + type(plugin).__qualname__
    top = dotted.split(".", 1)[0]
    distributions = packages_distributions().get(top, [])
    if top == "twisted" or not distributions:
        return dotted
    return f"{dotted} ({distributions[0]} {version(distributions[0])})"


def listing(found: Discovery) -> str:
    """The text of C{--list-plugins}."""
    lines = ["upstream types:"]
    lines += [f"  {t.name:<16} {'/'.join(t.schemes):<28} {origin(t)}" for t in found.upstreamTypes]
    lines.append("policies (in order):")
    lines += [f"  {p.priority:>4} {p.name:<20} {p.description}  [{origin(p)}]" for p in found.policies]
    lines.append("credential checkers (--auth):")
    lines += [f"  {c.authType:<16} {c.authHelp.strip().splitlines()[0]}  [{origin(c)}]" for c in found.checkers]
    if found.problems:
        lines.append("BROKEN plugin modules:")
        lines += [f"  {problem}" for problem in found.problems]
    return "\n".join(lines)
