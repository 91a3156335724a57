"""
C{smtprelay-admin}: manage the tenant store from the command line.

    smtprelay-admin [--database URL] [--secret-key-file PATH] COMMAND ...

Exit status: 0 on success; 2 for bad input (a malformed or unknown name, a
duplicate, a refused URL or network), with one line on standard error; 1
when the store cannot do its work (database unreachable, schema not
current, key file unsafe), also with one line.  Passwords are never shown,
except one this command generated, once; upstream URLs are shown with their
password redacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import date

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from relay.admin import upstreams
from relay.auth.passwords import generatePassword
from relay.core.tenant import Rate
from relay.core.urls import UpstreamURL
from relay.seams.discovery import discover
from relay.store.database import DEFAULT_DATABASE, openEngine, requireCurrentSchema, upgrade
from relay.store.errors import Conflict, Invalid, NotFound, StoreError, UndecryptableSecret
from relay.store.models import ACTIVE, SUSPENDED
from relay.store.repository import Store
from relay.store.secrets import DEFAULT_KEY_FILE, KeyRing, dropOldKeys, rotate
from relay.store.values import COUNTERS, TenantDetails

__all__ = ["main", "validateUpstream"]

PROG = "smtprelay-admin"
DATABASE_ENV = "SMTPRELAY_DATABASE"
KEY_FILE_ENV = "SMTPRELAY_SECRET_KEY_FILE"

_BAD_INPUT = (Invalid, NotFound, Conflict)
_NUMBER = re.compile(r"[0-9]+")


def validateUpstream(url: UpstreamURL) -> None:
    """
    Check an upstream URL with the installed upstream type of its scheme.

    @raise ValueError: no usable installed type handles the scheme, or the
        type refuses the URL.
    """
    found = discover()
    if url.scheme in found.broken:
        raise ValueError(f"the upstream type for {url.scheme}:// is broken: {found.broken[url.scheme]}")
    types = found.typesByScheme()
    if url.scheme not in types:
        raise ValueError(f"unknown upstream scheme {url.scheme!r} (installed: {', '.join(sorted(types))})")
    types[url.scheme].validate(url)


# Reading option values


def _number(text: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"expected a whole number or none, not {text!r}")
    return int(text)


def _yesNo(text: str) -> bool:
    if text not in ("yes", "no"):
        raise ValueError(f"expected yes or no, not {text!r}")
    return text == "yes"


def _orNone(parse: Callable[[str], object]) -> Callable[[str], object]:
    """C{parse}, or C{None} for C{none}: the option clears the setting."""
    return lambda text: None if text == "none" else parse(text)


@dataclasses.dataclass(frozen=True, slots=True)
class _Setting:
    """An option of C{tenant set}: the L{Store.setTenant} keyword it sets, and how."""

    option: str
    metavar: str
    keyword: str
    label: str
    parse: Callable[[str], object]
    help: str


_CONTACT = [
    _Setting("--email", "E", "email", "email", str, "contact e-mail address"),
    _Setting("--company", "C", "company", "company", str, "company name"),
    _Setting("--org-id", "ID", "orgId", "org id", _orNone(str), "Salesforce organisation id, or none"),
]
_LIMITS = [
    _Setting(
        "--max-size", "BYTES", "maxSize", "max size", _orNone(_number),
        "largest message in octets, or none for the relay's --max-message-size",
    ),
    _Setting(
        "--max-recipients", "N", "maxRecipients", "max recipients", _orNone(_number),
        "recipients per message, or none",
    ),
    _Setting("--rate", "RATE", "rate", "rate", _orNone(Rate.parse), "messages per period (100/1m, 10000/1d), or none"),
    _Setting(
        "--rate-recipients", "RATE", "rateRecipients", "rate recipients", _orNone(Rate.parse),
        "recipients per period (10000/1d), or none",
    ),
    _Setting(
        "--max-concurrency", "N", "maxConcurrency", "max concurrency", _orNone(_number),
        "transactions at once, or none",
    ),
    _Setting("--allow-bounces", "yes|no", "allowBounces", "allow bounces", _yesNo, "accept the null sender <>"),
]  # fmt: skip
_SETTINGS = _CONTACT + _LIMITS


def _changes(args: argparse.Namespace) -> dict[str, object]:
    """
    The settings given to C{tenant set}, as L{Store.setTenant} keywords.

    @raise Invalid: an option's value cannot be read, or none is given.
    """
    changes = {}
    for setting in _SETTINGS:
        text = getattr(args, setting.keyword)
        if text is not None:
            try:
                changes[setting.keyword] = setting.parse(text)
            except ValueError as e:
                raise Invalid(f"{setting.option}: {e}") from None
    if not changes:
        raise Invalid(f"nothing to change: give one or more of {', '.join(s.option for s in _SETTINGS)}")
    return changes


def _since(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"--since: expected a day as YYYY-MM-DD, not {text!r}") from None


# Printing


def _printJSON(value: object) -> None:
    """Print a value as JSON: dataclasses as objects, days and timestamps in ISO 8601, rates as C{100/1m}."""

    def encode(item: object) -> object:
        if isinstance(item, date):
            return item.isoformat()
        if isinstance(item, Rate):
            return str(item)
        if dataclasses.is_dataclass(item):
            return {field.name: getattr(item, field.name) for field in dataclasses.fields(item)}
        raise TypeError(f"cannot encode {type(item).__name__} as JSON")

    print(json.dumps(value, indent=2, default=encode))


def _printTable(rows: Sequence[Sequence[object]], numeric: int = 0) -> None:
    """Print rows (the first is the header) in columns; the last C{numeric} ones are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    first = len(widths) - numeric
    for row in cells:
        padded = [
            cell.rjust(width) if column >= first else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(padded).rstrip())


def _shown(value: object) -> str:
    """A setting as operators read it: C{-} when not set, C{yes} or C{no}."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# Commands


def _dbUpgrade(args: argparse.Namespace, engine: Engine) -> None:
    upgrade(engine)
    print("database schema is up to date")


def _tenantAdd(args: argparse.Namespace, store: Store) -> None:
    tenant = store.addTenant(args.name, args.email, args.company, args.org_id)
    print(f"tenant {tenant.name!r} added" + (f" (org id {tenant.orgId})" if tenant.orgId else ""))


def _tenantList(args: argparse.Namespace, store: Store) -> None:
    tenants = store.listTenants()
    if args.json:
        _printJSON(tenants)
        return
    _printTable(
        [("NAME", "STATUS", "ORG ID", "COMPANY", "EMAIL")]
        + [(t.name, t.status, t.orgId or "-", t.company, t.email) for t in tenants]
    )


def _tenantShow(args: argparse.Namespace, store: Store) -> None:
    tenant = store.showTenant(args.name)
    if args.json:
        _printJSON(tenant)
        return
    _printDetails(tenant)


def _printDetails(tenant: TenantDetails) -> None:
    fields = [
        ("name", tenant.name),
        ("status", tenant.status),
        ("company", tenant.company),
        ("email", tenant.email),
        ("org id", _shown(tenant.orgId)),
        ("created", tenant.createdAt.isoformat(timespec="seconds")),
        *[(setting.label, _shown(getattr(tenant, setting.keyword))) for setting in _LIMITS],
        ("logins", ", ".join(login.username for login in tenant.logins) or "-"),
        ("domains", ", ".join(tenant.domains) or "-"),
        ("blocklist", ", ".join(tenant.blocklist) or "-"),
        ("networks", ", ".join(n.network + (" no-auth" if n.noAuth else "") for n in tenant.networks) or "-"),
        ("upstreams", "-" if not tenant.upstreams else ""),
    ]
    for label, value in fields:
        print(f"{label + ':':<17}{value}".rstrip())
    for upstream in tenant.upstreams:
        print(f"  #{upstream.id}  priority {upstream.priority}  {upstream.url}")
        if upstream.oauth is not None:
            oauth = upstream.oauth
            secret = "client secret ***" if oauth.hasClientSecret else "no client secret"
            print(f"      OAuth {oauth.grant}: client {oauth.clientId} at {oauth.tokenUrl} ({secret})")
            if oauth.scope:
                print(f"      scope {oauth.scope}")
        if upstream.clientCertificate is not None:
            certificate = upstream.clientCertificate
            print(f"      client certificate {certificate.subject}, expires {certificate.notAfter:%Y-%m-%d}")


def _tenantSet(args: argparse.Namespace, store: Store) -> None:
    changes = _changes(args)
    tenant = store.setTenant(args.name, **changes)
    shown = [f"{s.label} {_shown(getattr(tenant, s.keyword))}" for s in _SETTINGS if s.keyword in changes]
    print(f"tenant {tenant.name!r}: {', '.join(shown)}")


def _tenantStatus(status: str, done: str) -> Callable[[argparse.Namespace, Store], None]:
    def run(args: argparse.Namespace, store: Store) -> None:
        store.setTenant(args.name, status=status)
        print(f"tenant {args.name!r} {done}")

    return run


def _tenantExport(args: argparse.Namespace, store: Store) -> None:
    _printJSON(store.exportTenant(args.name))


def _tenantDelete(args: argparse.Namespace, store: Store) -> None:
    if not args.purge:
        raise Invalid("tenant delete removes the tenant and everything stored about it, usage included: add --purge")
    deleted = store.deleteTenant(args.name)
    rows = ", ".join(f"{table} {count}" for table, count in sorted(deleted.items()))
    print(f"tenant {args.name!r} deleted with every row about it ({rows})")


def _loginAdd(args: argparse.Namespace, store: Store) -> None:
    if args.password_stdin:
        password = _passwordLine()
    else:
        password = generatePassword()
    store.addLogin(args.tenant, args.username, password)
    print(f"login {args.username!r} added to tenant {args.tenant!r}")
    if not args.password_stdin:
        print(f"password: {password}")
        print("Keep this password now: it is stored only as a hash and cannot be shown again.")


def _passwordLine() -> str:
    """One line of standard input: a password given so that it is not in the command line (C{ps})."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise Invalid("no password on standard input (expected one line)")
    return password


def _upstreamAdd(args: argparse.Namespace, store: Store) -> None:
    upstreams.upstreamAdd(args, store, validateUpstream)


def _upstreamTest(args: argparse.Namespace, store: Store) -> None:
    status = upstreams.upstreamTest(args, store)
    if status:
        raise _Failed(status)


def _oauthConsent(args: argparse.Namespace, store: Store) -> None:
    status = upstreams.oauthConsent(args, store)
    if status:
        raise _Failed(status)


class _Failed(Exception):
    """A command that said why itself and ends with this status."""

    def __init__(self, status: int):
        self.status = status


def _tenantItem(change: Callable[[Store, str, str], object], done: str) -> Callable[[argparse.Namespace, Store], None]:
    """
    A command changing one item of a tenant's (C{TENANT ITEM}).

    @param change: a L{Store} method taking the tenant and the item.
    @param done: what to print, formatted with C{tenant} and C{item}: what
        C{change} returned, or the item given when it returned C{None}.
    """

    def run(args: argparse.Namespace, store: Store) -> None:
        result = change(store, args.tenant, args.item)
        print(done.format(tenant=args.tenant, item=args.item if result is None else result))

    return run


def _networkAdd(args: argparse.Namespace, store: Store) -> None:
    network = store.addNetwork(args.tenant, args.network, noAuth=args.no_auth)
    kind = "no-auth network" if network.noAuth else "network"
    print(f"{kind} {network.network} added to tenant {args.tenant!r}")


def _usage(args: argparse.Namespace, store: Store) -> None:
    rows = store.usage(args.tenant, None if args.since is None else _since(args.since))
    if args.json:
        _printJSON(rows)
        return
    if not rows:
        print("no usage recorded")
        return
    table: list[Sequence[object]] = [("TENANT", "DAY", *[counter.upper() for counter in COUNTERS])]
    for tenant in sorted({row.tenant for row in rows}):
        days = [row for row in rows if row.tenant == tenant]
        table += [(tenant, row.day, *[getattr(row, counter) for counter in COUNTERS]) for row in days]
        table.append((tenant, "total", *[sum(getattr(row, counter) for row in days) for counter in COUNTERS]))
    _printTable(table, numeric=len(COUNTERS))


def _secretsRotate(args: argparse.Namespace, engine: Engine) -> None:
    requireCurrentSchema(engine)
    rotation = Store(engine, rotate(args.secret_key_file)).reencryptSecrets()
    print(f"new primary key added to {args.secret_key_file}")
    print(f"{rotation.reencrypted} upstream secrets re-encrypted with it")
    if rotation.undecryptable:
        ids = ", ".join(f"#{number}" for number in rotation.undecryptable)
        print(f"left as they were, no key decrypting them: the secrets of upstreams {ids} (add them again)")
        if args.drop_old:
            raise UndecryptableSecret(f"old keys kept: upstreams {ids} have secrets no key decrypts")
    if args.drop_old:
        print(f"{dropOldKeys(args.secret_key_file)} old keys dropped from {args.secret_key_file}")
    else:
        print(
            "Relays read the key file again when a secret does not decrypt: copy it now to every other machine "
            "running the relay.  The old keys stay in it; once every machine has the new file, drop them with "
            "secrets rotate --drop-old, or by deleting all lines but the first."
        )


# The commands on one item of a tenant's, TENANT ITEM: area, name, the Store method, the item's metavar, help,
# and what is printed (see _tenantItem).
_ITEM_COMMANDS = [
    ("login", "remove", Store.removeLogin, "USERNAME", "remove an SMTP login from a tenant",
     "login {item!r} removed from tenant {tenant!r}"),
    ("upstream", "remove", Store.removeUpstream, "UPSTREAM", "remove an upstream (#ID or URL) from a tenant",
     "upstream #{item.id} {item.url} removed from tenant {tenant!r}"),
    ("domain", "add", Store.addDomain, "DOMAIN", "allow a sender domain",
     "domain {item!r} added to tenant {tenant!r}"),
    ("domain", "remove", Store.removeDomain, "DOMAIN", "no longer allow a sender domain",
     "domain {item!r} removed from tenant {tenant!r}"),
    ("network", "remove", Store.removeNetwork, "NETWORK", "remove a client network from a tenant",
     "network {item} removed from tenant {tenant!r}"),
    ("blocklist", "add", Store.addBlockedDomain, "DOMAIN", "block a domain and its subdomains",
     "domain {item!r} and its subdomains blocked for tenant {tenant!r}"),
    ("blocklist", "remove", Store.removeBlockedDomain, "DOMAIN", "unblock a domain",
     "domain {item!r} no longer blocked for tenant {tenant!r}"),
]  # fmt: skip


def _withStore(command: Callable[[argparse.Namespace, Store], None]) -> Callable[[argparse.Namespace, Engine], None]:
    """A command that needs the store at the current schema, with its key ring."""

    def run(args: argparse.Namespace, engine: Engine) -> None:
        requireCurrentSchema(engine)
        command(args, Store(engine, KeyRing.fromFile(args.secret_key_file)))

    return run


def _parser() -> argparse.ArgumentParser:
    """The command line: global options, then an area and a command in it (C{tenant add})."""
    parser = argparse.ArgumentParser(prog=PROG, description="Manage the smtprelay tenant store.")
    parser.add_argument(
        "--database",
        metavar="URL",
        default=os.environ.get(DATABASE_ENV, DEFAULT_DATABASE),
        help=f"sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (default: ${DATABASE_ENV} or {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--secret-key-file",
        metavar="PATH",
        default=os.environ.get(KEY_FILE_ENV, DEFAULT_KEY_FILE),
        help=f"keys encrypting upstream passwords, created (mode 0600) when absent "
        f"(default: ${KEY_FILE_ENV} or {DEFAULT_KEY_FILE})",
    )
    areas = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(area: argparse._SubParsersAction, name: str, run: Callable, help: str, *arguments: str):
        """A command taking the store, with positional C{arguments} (metavars, in upper case)."""
        sub = area.add_parser(name, help=help, description=help)
        sub.set_defaults(run=_withStore(run))
        for argument in arguments:
            sub.add_argument(argument.lower(), metavar=argument)
        return sub

    def group(name: str, help: str) -> argparse._SubParsersAction:
        return areas.add_parser(name, help=help).add_subparsers(title="commands", required=True, metavar="COMMAND")

    def jsonOption(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print JSON")

    groups = {
        "db": group("db", "the database schema"),
        "tenant": group("tenant", "tenants"),
        "login": group("login", "SMTP logins"),
        "upstream": group("upstream", "upstreams"),
        "domain": group("domain", "sender domains (example.com, or *.example.com for its subdomains)"),
        "network": group("network", "client networks (CIDR)"),
        "blocklist": group("blocklist", "domains refused in URLs of message content, with their subdomains"),
    }
    upgrading = groups["db"].add_parser("upgrade", help="create or migrate the schema to the latest revision")
    upgrading.set_defaults(run=_dbUpgrade)

    tenant = groups["tenant"]
    add = command(tenant, "add", _tenantAdd, "add a tenant", "NAME")
    add.add_argument("--email", required=True, help="contact e-mail address")
    add.add_argument("--company", required=True)
    add.add_argument("--org-id", metavar="ID", help="Salesforce organisation id (15 or 18 characters, 00D...)")
    jsonOption(command(tenant, "list", _tenantList, "list the tenants"))
    jsonOption(command(tenant, "show", _tenantShow, "show a tenant with its settings and what belongs to it", "NAME"))
    change = command(tenant, "set", _tenantSet, "change a tenant's fields, limits and rates", "NAME")
    for setting in _SETTINGS:
        change.add_argument(setting.option, metavar=setting.metavar, dest=setting.keyword, help=setting.help)
    command(tenant, "suspend", _tenantStatus(SUSPENDED, "suspended"), "stop relaying for a tenant", "NAME")
    command(tenant, "resume", _tenantStatus(ACTIVE, "resumed"), "relay for a suspended tenant again", "NAME")
    command(tenant, "export", _tenantExport, "print everything stored about a tenant as JSON, secrets redacted", "NAME")
    command(tenant, "delete", _tenantDelete, "delete a tenant and everything stored about it", "NAME").add_argument(
        "--purge", action="store_true", help="required: usage records are deleted too"
    )

    command(groups["login"], "add", _loginAdd, "add an SMTP login to a tenant", "TENANT", "USERNAME").add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input (default: generate one and print it)",
    )
    upstreams.addArguments(
        command(groups["upstream"], "add", _upstreamAdd, "add an upstream to a tenant", "TENANT", "URL"),
        command(
            groups["upstream"], "test", _upstreamTest,
            "connect to an upstream as the relay would and say what it showed (no mail is sent)", "TENANT", "UPSTREAM",
        ),
        command(
            groups["upstream"], "oauth-consent", _oauthConsent,
            "a user's OAuth consent for an upstream (a browser, or --device): stores its refresh token",
            "TENANT", "UPSTREAM",
        ),
    )  # fmt: skip
    network = command(groups["network"], "add", _networkAdd, "add a client network to a tenant", "TENANT", "NETWORK")
    network.add_argument(
        "--no-auth", action="store_true", help="its clients need no AUTH (at most /16 or /48, no other tenant's)"
    )
    for area, name, change, item, help, done in _ITEM_COMMANDS:
        command(groups[area], name, _tenantItem(change, done), help, "TENANT").add_argument("item", metavar=item)

    usage = command(areas, "usage", _usage, "relayed messages, recipients and bytes per tenant and day (UTC)")
    usage.add_argument("tenant", metavar="TENANT", nargs="?", help="only this tenant")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="from this day on")
    jsonOption(usage)

    secrets = group("secrets", "the keys encrypting upstream passwords")
    rotation = secrets.add_parser("rotate", help="add a new primary key and re-encrypt every stored secret with it")
    rotation.set_defaults(run=_secretsRotate)
    rotation.add_argument("--drop-old", action="store_true", help="then drop the old keys from the file")
    return parser


def _fail(reason: object, status: int) -> int:
    """Say why the command failed, on one line of standard error."""
    print(f"{PROG}: error: {' '.join(str(reason).split())}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one command.

    @param argv: the arguments, without the program name (default:
        C{sys.argv[1:]}).
    @return: the exit status.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0), already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        engine = openEngine(args.database)
        try:
            args.run(args, engine)
        finally:
            engine.dispose()
    except _Failed as e:
        return e.status
    except _BAD_INPUT as e:
        return _fail(e, 2)
    except StoreError as e:
        return _fail(e, 1)
    except SQLAlchemyError as e:
        return _fail(f"database: {getattr(e, 'orig', None) or e}", 1)
    except OSError as e:
        return _fail(e, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
