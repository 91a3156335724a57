"""
Plugins as a third party ships them: the example distribution pip-installed
into the venv is discovered and used by a running `twistd smtprelay`, and a
plugin module that fails to import is reported by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tests.support.relay import TWISTD, RelayProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "smtprelay-example"


@pytest.fixture(scope="session")
def exampleInstalled():
    """The example plugin distribution, installed into this venv as its own distribution."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(EXAMPLE)],
        check=True,
        timeout=300,
    )
    try:
        return version("smtprelay-example")
    except PackageNotFoundError:
        pytest.fail("smtprelay-example did not install")


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
    output = listPlugins()
    assert f"smtprelay_example.pipe.PipeUpstreamType (smtprelay-example {exampleInstalled})" in output
    assert "subject-filter" in output and "smtprelay_example.subjects.SubjectFilterPolicy" in output
    assert "relay.upstreams.smtp.SMTPUpstreamType (smtprelay " in output
    assert "tenants" in output and "BROKEN" not in output


def test_example_plugins_used_by_running_relay(exampleInstalled, ca, tmp_path):
    """A relay started after the install delivers through the example upstream and runs its policy."""
    relay = RelayProcess(tmp_path / "relay", ca)
    try:
        out = tmp_path / "delivered.eml"
        account = relay.addTenant("example", f"pipe:///usr/bin/tee?arg={out}")
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
