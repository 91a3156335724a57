"""
Helpers for the servers the tests run as subprocesses.
"""

from __future__ import annotations

import subprocess

__all__ = ["stopProcess"]


def stopProcess(process: subprocess.Popen, timeout: float) -> None:
    """Terminate a subprocess (SIGTERM, then SIGKILL after C{timeout} seconds) and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
