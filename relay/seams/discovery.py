"""
Discovery of the plugins installed with any distribution, through
C{twisted.plugin.getPlugins} over the C{twisted.plugins} package, and the
check that each conforms to its interface.

Nothing broken is dropped silently.  A plugin module that fails to import,
and a plugin that does not provide its interface (checked with
C{zope.interface.verify} when it loads), is named with its distribution and
what is wrong in L{Discovery.problems}, which the relay logs at start and
C{--list-plugins} prints as BROKEN.  A broken upstream type is left out
(L{Discovery.broken} keeps its schemes: a relay with a tenant that needs it
does not start); a broken policy stops the relay from starting, since a
relay never runs with fewer checks than it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import packages_distributions, version

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.plugin import getCache, getPlugins
from twisted.python.modules import getModule
from zope.interface import provider

from relay.seams.interfaces import IPolicyFactory, IUpstreamType
from relay.seams.registration import PluginError, PolicyPlugin, UpstreamTypePlugin, conformance

__all__ = ["Discovery", "LoadedType", "discover", "listing", "origin", "upstreamTypes"]


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

    @provider(ILogObserver)
    def observe(event: dict) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            problems.append(f"{_brokenModule(failure)}: {failure.type.__name__}: {failure.getErrorMessage()}")

    globalLogPublisher.addObserver(observe)
    try:
        return list(getPlugins(interface, twisted.plugins))
    finally:
        globalLogPublisher.removeObserver(observe)


@dataclass(frozen=True)
class LoadedType:
    """
    An upstream type that loaded and conforms.

    @ivar registration: what the plugin module registered (shown by C{--list-plugins}).
    @ivar kind: the type itself.
    """

    registration: object
    kind: IUpstreamType

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(self.kind.schemes)


@dataclass
class Discovery:
    """
    What is installed and usable: upstream types, policy factories, and the
    checker factories that take a user name and password (SMTP AUTH PLAIN
    and LOGIN).

    @ivar problems: one line for each plugin module that does not import and
        each plugin that does not conform.
    @ivar broken: the URL schemes of upstream types refused, and why.
    @ivar brokenPolicies: the names of policies refused, and why.
    """

    upstreamTypes: list[LoadedType] = field(default_factory=list)
    policies: list = field(default_factory=list)
    checkers: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    brokenPolicies: dict[str, str] = field(default_factory=dict)

    def typesByScheme(self) -> dict[str, IUpstreamType]:
        """Every usable upstream type, keyed by each URL scheme it handles."""
        return {scheme: loaded.kind for loaded in self.upstreamTypes for scheme in loaded.schemes}


def _loadType(registration) -> IUpstreamType:
    """The type a registration stands for, checked."""
    kind = registration.load() if isinstance(registration, UpstreamTypePlugin) else registration
    conformance(IUpstreamType, kind)
    return kind


def discover() -> Discovery:
    found = Discovery()
    for registration in _collect(IUpstreamType, found.problems):
        try:
            found.upstreamTypes.append(LoadedType(registration, _loadType(registration)))
        except PluginError as e:
            reason = f"upstream type {registration.name} [{origin(registration)}]: {e}"
            found.problems.append(reason)
            for scheme in registration.schemes:
                found.broken[scheme] = reason
    for factory in sorted(_collect(IPolicyFactory, found.problems), key=lambda f: (f.priority, f.name)):
        try:
            conformance(IPolicyFactory, factory)
            if isinstance(factory, PolicyPlugin):
                factory.load()
        except PluginError as e:
            reason = f"policy {factory.name} [{origin(factory)}]: {e}"
            found.problems.append(reason)
            found.brokenPolicies[factory.name] = reason
            continue
        found.policies.append(factory)
    for checker in _collect(ICheckerFactory, found.problems):
        try:
            conformance(ICheckerFactory, checker)
        except PluginError as e:
            found.problems.append(f"credential checker {getattr(checker, 'authType', '?')} [{origin(checker)}]: {e}")
            continue
        if IUsernamePassword in checker.credentialInterfaces:
            found.checkers.append(checker)
    found.problems = sorted(set(found.problems + _unloadable()))
    return found


def upstreamTypes() -> dict[str, IUpstreamType]:
    """Every usable upstream type, keyed by each URL scheme it handles."""
    return discover().typesByScheme()


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
    lines += [f"  {t.name:<16} {'/'.join(t.schemes):<28} {origin(t.registration)}" for t in found.upstreamTypes]
    lines.append("policies (in order):")
    lines += [f"  {p.priority:>4} {p.name:<20} {p.description}  [{origin(p)}]" for p in found.policies]
    lines.append("credential checkers (--auth):")
    lines += [f"  {c.authType:<16} {c.authHelp.strip().splitlines()[0]}  [{origin(c)}]" for c in found.checkers]
    if found.problems:
        lines.append("BROKEN plugins:")
        lines += [f"  {problem}" for problem in found.problems]
    return "\n".join(lines)
