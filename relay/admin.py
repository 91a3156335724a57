"""
C{smtprelay-admin}: manage the tenant store from the command line.

    smtprelay-admin [--database URL] [--secret-key-file PATH] COMMAND ...

Exit status: 0 on success; 2 for bad input (a malformed or unknown name, a
duplicate, a refused URL), with one line on standard error; 1 when the store
cannot do its work (database unreachable, schema not current, key file
unsafe), also with one line.  Passwords are never shown, except one this
command generated, once; upstream URLs are shown with their password
redacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from relay.passwords import generatePassword
from relay.registry import upstreamTypes
from relay.store.database import DEFAULT_DATABASE, openEngine, requireCurrentSchema, upgrade
from relay.store.errors import Conflict, Invalid, NotFound, StoreError
from relay.store.repository import Store
from relay.store.secrets import DEFAULT_KEY_FILE, KeyRing
from relay.urls import UpstreamURL

__all__ = ["main", "validateUpstream"]

PROG = "smtprelay-admin"
DATABASE_ENV = "SMTPRELAY_DATABASE"
KEY_FILE_ENV = "SMTPRELAY_SECRET_KEY_FILE"

_BAD_INPUT = (Invalid, NotFound, Conflict)


def validateUpstream(url: UpstreamURL) -> None:
    """
    Check an upstream URL with the installed upstream type of its scheme.

    @raise ValueError: no installed type handles the scheme, or the type
        refuses the URL.
    """
    types = upstreamTypes()
    if url.scheme not in types:
        raise ValueError(f"unknown upstream scheme {url.scheme!r} (installed: {', '.join(sorted(types))})")
    types[url.scheme].validate(url)


def _dbUpgrade(args: argparse.Namespace, engine: Engine) -> None:
    upgrade(engine)
    print("database schema is up to date")


def _tenantAdd(args: argparse.Namespace, store: Store) -> None:
    tenant = store.addTenant(args.name, args.email, args.company, args.org_id)
    print(f"tenant {tenant.name!r} added" + (f" (org id {tenant.orgId})" if tenant.orgId else ""))


def _printJSON(value: object) -> None:
    """Print a value as JSON: dataclasses as objects, timestamps in ISO 8601."""

    def encode(item: object) -> object:
        if isinstance(item, datetime):
            return item.isoformat()
        if dataclasses.is_dataclass(item):
            return dataclasses.asdict(item)
        raise TypeError(f"cannot encode {type(item).__name__} as JSON")

    print(json.dumps(value, indent=2, default=encode))


def _tenantList(args: argparse.Namespace, store: Store) -> None:
    tenants = store.listTenants()
    if args.json:
        _printJSON(tenants)
        return
    rows = [("NAME", "STATUS", "ORG ID", "COMPANY", "EMAIL")]
    rows += [(t.name, t.status, t.orgId or "-", t.company, t.email) for t in tenants]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]))


def _tenantShow(args: argparse.Namespace, store: Store) -> None:
    tenant = store.showTenant(args.name)
    if args.json:
        _printJSON(tenant)
        return
    fields = [
        ("name", tenant.name),
        ("status", tenant.status),
        ("company", tenant.company),
        ("email", tenant.email),
        ("org id", tenant.orgId or "-"),
        ("created", tenant.createdAt.isoformat(timespec="seconds")),
        ("logins", ", ".join(tenant.logins) or "-"),
        ("domains", ", ".join(tenant.domains) or "-"),
        ("upstreams", "-" if not tenant.upstreams else ""),
    ]
    for label, value in fields:
        print(f"{label + ':':<11}{value}".rstrip())
    for upstream in tenant.upstreams:
        print(f"  {upstream.priority:>5}  {upstream.url}")


def _loginAdd(args: argparse.Namespace, store: Store) -> None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise Invalid("no password on standard input (expected one line)")
    else:
        password = generatePassword()
    store.addLogin(args.tenant, args.username, password)
    print(f"login {args.username!r} added to tenant {args.tenant!r}")
    if not args.password_stdin:
        print(f"password: {password}")
        print("Keep this password now: it is stored only as a hash and cannot be shown again.")


def _upstreamAdd(args: argparse.Namespace, store: Store) -> None:
    upstream = store.addUpstream(args.tenant, args.url, args.priority, validate=validateUpstream)
    print(f"upstream {upstream.url} added to tenant {args.tenant!r} (priority {upstream.priority})")


def _domainAdd(args: argparse.Namespace, store: Store) -> None:
    domain = store.addDomain(args.tenant, args.domain)
    print(f"domain {domain!r} added to tenant {args.tenant!r}")


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

    def command(area: argparse._SubParsersAction, name: str, run: Callable, help: str) -> argparse.ArgumentParser:
        sub = area.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    def group(name: str, help: str) -> argparse._SubParsersAction:
        return areas.add_parser(name, help=help).add_subparsers(title="commands", required=True, metavar="COMMAND")

    db = group("db", "the database schema")
    command(db, "upgrade", _dbUpgrade, "create or migrate the schema to the latest revision")

    tenant = group("tenant", "tenants")
    add = command(tenant, "add", _withStore(_tenantAdd), "add a tenant")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--email", required=True, help="contact e-mail address")
    add.add_argument("--company", required=True)
    add.add_argument("--org-id", metavar="ID", help="Salesforce organisation id (15 or 18 characters, 00D...)")
    command(tenant, "list", _withStore(_tenantList), "list the tenants").add_argument(
        "--json", action="store_true", help="print JSON"
    )
    show = command(tenant, "show", _withStore(_tenantShow), "show a tenant with its logins, upstreams and domains")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON")

    login = command(group("login", "SMTP logins"), "add", _withStore(_loginAdd), "add an SMTP login to a tenant")
    login.add_argument("tenant", metavar="TENANT")
    login.add_argument("username", metavar="USERNAME")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input (default: generate one and print it)",
    )

    upstream = command(group("upstream", "upstreams"), "add", _withStore(_upstreamAdd), "add an upstream to a tenant")
    upstream.add_argument("tenant", metavar="TENANT")
    upstream.add_argument("url", metavar="URL", help="such as smtp+starttls://user:password@mail.example.com:587")
    upstream.add_argument("--priority", type=int, default=10, help="lowest is tried first (default: 10)")

    domain = command(group("domain", "sender domains"), "add", _withStore(_domainAdd), "allow a sender domain")
    domain.add_argument("tenant", metavar="TENANT")
    domain.add_argument("domain", metavar="DOMAIN", help="example.com, or *.example.com for its subdomains")
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
