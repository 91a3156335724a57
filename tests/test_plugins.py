"""
Plugins as a third party ships them: the example distribution, installed
as its own distribution into a throwaway directory (the developer's venv is
left alone) and put on the relay's path, is discovered and used by a
running `twistd smtprelay`; a plugin module that fails to import, and a
plugin that does not conform to its interface, are reported by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.relay import TWISTD, RelayProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "smtprelay-example"


@pytest.fixture(scope="session")
def exampleInstalled(tmp_path_factory) -> dict[str, str]:
    """
    The example plugin distribution, installed (with its metadata) into a
    directory of its own; the environment that puts it on a relay's path.
    """
    site = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site)]
        + [str(EXAMPLE)],
        check=True,
        timeout=300,
    )
    [metadata] = site.glob("smtprelay_example-*.dist-info")
    return {"PYTHONPATH": str(site), "EXAMPLE_VERSION": metadata.name.removesuffix(".dist-info").split("-")[1]}


def listPlugins(**environment) -> str:
    result = subprocess.run(
        [TWISTD, "smtprelay", "--list-plugins"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **environment},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_plugins_shows_origin(exampleInstalled):
    """--list-plugins prints built-in and third-party plugins with their distribution."""
    output = listPlugins(**exampleInstalled)
    assert (
        f"smtprelay_example.pipe.PipeUpstreamType (smtprelay-example {exampleInstalled['EXAMPLE_VERSION']})" in output
    )
    assert "subject-filter" in output and "smtprelay_example.subjects.SubjectFilterPolicy" in output
    assert "relay.upstreams.smtp.SMTPUpstreamType (smtprelay " in output
    assert "tenants" in output and "BROKEN" not in output


def test_example_plugins_used_by_running_relay(exampleInstalled, ca, tmp_path):
    """A relay started after the install delivers through the example upstream and runs its policy."""
    relay = RelayProcess(tmp_path / "relay", ca, environment=exampleInstalled)
    try:
        out = tmp_path / "delivered.eml"
        # The example is on the relay's path, not this process's: the relay checks the URL when it loads it.
        account = relay.addTenant("example", f"pipe:///usr/bin/tee?arg={out}", validate=lambda url: None)
        message = b"From: a@example.com\r\nSubject: via pipe\r\n\r\nhello\r\n"
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], message) == {}
            delivered = out.read_bytes()
            assert delivered.startswith(b"Received: from client.test") and delivered.endswith(message)
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            code, text = client.data(b"From: a@example.com\r\nSubject: [BLOCK] no\r\n\r\nx\r\n")
            assert (code, text[:32]) == (550, b"5.7.1 Subject refused by policy ")
    finally:
        relay.stop()


BROKEN = "raise ImportError('boom: a plugin with a missing dependency')\n"


def test_broken_plugin_reported_by_name(tmp_path, ca):
    """A plugin module that raises at import is named with its error, by --list-plugins and at start."""
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "smtprelay_broken.py").write_text(BROKEN)
    environment = {"PYTHONPATH": str(tmp_path / "site")}
    output = listPlugins(**environment)
    assert "BROKEN plugins:\n  smtprelay_broken: ImportError: boom: a plugin with a missing dependency" in output
    relay = RelayProcess(tmp_path / "relay", ca, environment=environment)
    try:
        assert "plugin broken: smtprelay_broken: ImportError: boom" in relay.log()
    finally:
        relay.stop()


NONCONFORMING = """
from relay.plugin import UpstreamTypePlugin

careless = UpstreamTypePlugin("careless", ("careless",), "careless_impl.CarelessType", "forgot open()")
"""
NONCONFORMING_IMPLEMENTATION = """
from zope.interface import implementer
from relay.plugin import IUpstreamType


@implementer(IUpstreamType)
class CarelessType:
    name = "careless"
    schemes = ("careless",)

    def validate(self, url):
        pass
"""


def test_nonconforming_plugin_refused(tmp_path, ca):
    """
    An upstream type missing a method is refused when it loads, named with
    what is missing; a relay with a tenant that needs it does not start (one
    line, exit 1); without such a tenant it starts and says so in its log.
    """
    site = tmp_path / "site"
    (site / "twisted" / "plugins").mkdir(parents=True)
    (site / "twisted" / "plugins" / "smtprelay_careless.py").write_text(NONCONFORMING)
    (site / "careless_impl.py").write_text(NONCONFORMING_IMPLEMENTATION)
    environment = {"PYTHONPATH": str(site)}
    output = listPlugins(**environment)
    assert (
        "BROKEN plugins:\n  upstream type careless [careless_impl.CarelessType]: IUpstreamType: missing 'open'"
        in output
    )
    relay = RelayProcess(tmp_path / "relay", ca, environment=environment)
    try:
        assert (
            "plugin broken: upstream type careless [careless_impl.CarelessType]: IUpstreamType: missing 'open'"
            in relay.log()
        )
        relay.store.addTenant("needs", "ops@needs.example", "Needs Ltd")
        relay.store.addUpstream("needs", "careless://host", validate=lambda url: None)
    finally:
        relay.stop()
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "smtprelay", f"--database={relay.database}", f"--secret-key-file={relay.keyFile}",
         "--smtp=tcp:0:interface=127.0.0.1", "--metrics=tcp:0:interface=127.0.0.1", "--workers=1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **environment},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "twistd smtprelay: tenant needs needs upstream type careless [careless_impl.CarelessType]: "
        "IUpstreamType: missing 'open'"
    )
