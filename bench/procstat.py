"""
CPU time and memory of a server's processes, from /proc (Linux only).

A server is one or more root processes and everything below them (Postfix:
its master and the smtpd, cleanup, qmgr, smtp, ... it forks).  L{Usage}
measures one run:

- CPU seconds: utime + stime of every process in the trees, plus cutime +
  cstime (the children they already reaped), at the end minus at the start;
  a Postfix smtpd that exits during the run is counted through its master.
- peak RSS: at the start every process's high-water mark (VmHWM) is reset
  (clear_refs, needs the same user or root); a sampler thread adds up VmHWM
  over the live processes every 50 ms, and the peak is the largest sum.
  For one process that is exactly its peak RSS; for several it counts shared
  pages (libraries) once per process, as RSS does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["Usage", "cpuSeconds", "descendants", "status"]

_TICK = os.sysconf("SC_CLK_TCK")


def status(pid: int, field: str) -> int:
    """A /proc/PID/status field in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def cpuSeconds(pid: int, children: bool = True) -> float:
    """utime + stime (+ cutime + cstime) of one process, in seconds."""
    fields = _stat(pid)  # fields[0] is field 3 (state)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def descendants(roots: list[int]) -> list[int]:
    """The roots and every live process below them."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [p for p in roots if Path(f"/proc/{p}").exists()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def _treeCPU(roots: list[int]) -> float:
    total = 0.0
    for pid in descendants(roots):
        try:
            total += cpuSeconds(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


def _treeHWM(roots: list[int]) -> int:
    total = 0
    for pid in descendants(roots):
        try:
            total += status(pid, "VmHWM")
        except (OSError, KeyError, ValueError):
            pass
    return total


class Usage:
    """
    CPU seconds and peak RSS of process trees over one run:
    C{u = Usage(pids); u.start(); ...; u.stop(); u.cpu, u.peakRSS}.

    @ivar cpu: seconds, or C{None} without processes.
    @ivar peakRSS: bytes, or C{None} without processes.
    """

    def __init__(self, roots: list[int], interval: float = 0.05):
        self.roots = roots
        self.interval = interval
        self.cpu: float | None = None
        self.peakRSS: int | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def start(self) -> None:
        if not self.roots:
            return
        for pid in descendants(self.roots):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        self._cpu0 = _treeCPU(self.roots)
        self._peak = _treeHWM(self.roots)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self._peak = max(self._peak, _treeHWM(self.roots))

    def stop(self) -> None:
        if not self.roots:
            return
        self._done.set()
        self._thread.join()
        self._peak = max(self._peak, _treeHWM(self.roots))
        self.cpu = _treeCPU(self.roots) - self._cpu0
        self.peakRSS = self._peak * 1024
