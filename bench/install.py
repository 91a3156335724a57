"""
Install what the comparison needs, idempotently, at bench time:

- Debian's `postfix` (smtp-source, smtp-sink and the throwaway Postfix relay),
  preseeded "No configuration" so the system's own Postfix stays stopped,
  and `iproute2` (ss) and `nodejs`/`npm` when missing;
- a virtualenv under bench/.peers/venv with aiosmtpd and aiosmtplib;
- Haraka from npm under bench/.peers/haraka.

Needs root for apt-get (uses sudo when not root).  `python -m bench.install`
runs it alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["PEERS", "ensure", "versions"]

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / ".peers"
VENV = PEERS / "venv"
HARAKA_DIR = PEERS / "haraka"
PYTHON_PEERS = ["aiosmtpd==1.4.6", "aiosmtplib==5.1.3"]
HARAKA = "Haraka@3.3.4"


def _run(command: list[str], **kwargs) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, **kwargs)


def _root(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return command
    if not shutil.which("sudo"):
        raise SystemExit(f"need root (or sudo) for: {' '.join(command)}")
    return ["sudo", *command]


def ensureApt() -> None:
    needed = {
        "smtp-source": "postfix",
        "smtp-sink": "postfix",
        "postfix": "postfix",
        "ss": "iproute2",
        "npm": "npm",
        "node": "nodejs",
    }
    packages = sorted({package for tool, package in needed.items() if not _which(tool)})
    if not packages:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(_root(["apt-get", "update", "-q"]), env=env)
    if "postfix" in packages:
        _run(
            _root(["debconf-set-selections"]),
            input=b"postfix postfix/main_mailer_type select No configuration\n",
        )
    _run(_root(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]), env=env)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )


def ensureVenv() -> None:
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == " ".join(PYTHON_PEERS):
        return
    if not (VENV / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    _run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *PYTHON_PEERS])
    marker.write_text(" ".join(PYTHON_PEERS))


def ensureHaraka() -> None:
    marker = HARAKA_DIR / ".installed"
    if marker.exists() and marker.read_text() == HARAKA and harakaBinary().exists():
        return
    HARAKA_DIR.mkdir(parents=True, exist_ok=True)
    if not (HARAKA_DIR / "package.json").exists():
        (HARAKA_DIR / "package.json").write_text('{"name": "bench-haraka", "private": true}\n')
    _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", HARAKA], cwd=HARAKA_DIR)
    marker.write_text(HARAKA)


def harakaBinary() -> Path:
    return HARAKA_DIR / "node_modules" / "Haraka" / "bin" / "haraka"


def ensure() -> None:
    PEERS.mkdir(parents=True, exist_ok=True)
    ensureApt()
    ensureVenv()
    ensureHaraka()


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def versions() -> dict[str, str]:
    """Versions of everything compared, for the results file."""
    haraka = "?"
    try:
        haraka = json.loads((HARAKA_DIR / "node_modules" / "Haraka" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        pass
    pip = _output(
        [
            str(VENV / "bin" / "python"),
            "-c",
            "import aiosmtpd, aiosmtplib; print(aiosmtpd.__version__, aiosmtplib.__version__)",
        ]
    ).split()
    twisted = _output([sys.executable, "-c", "import twisted; print(twisted.__version__)"])
    return {
        "postfix": _output(["postconf", "-dh", "mail_version"]),
        "haraka": haraka,
        "node": _output(["node", "--version"]),
        "aiosmtpd": pip[0] if len(pip) > 1 else "?",
        "aiosmtplib": pip[1] if len(pip) > 1 else "?",
        "python": sys.version.split()[0],
        "twisted": twisted,
    }


if __name__ == "__main__":
    ensure()
    print(json.dumps(versions(), indent=1))
