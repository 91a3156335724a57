"""
Compare smtprelay with peer relays on this machine, end to end, and print
one table (also written to bench/results/<timestamp>.md, raw runs beside it
as .json).

    make bench            # python -m bench.compare: 4 loads, median of 3
    make bench QUICK=1    # python -m bench.compare --quick: smaller loads, 1 run, ~1 minute

Every system relays into its own smtp-sink on loopback (bench/systems.py);
the same clients and loads drive all of them (bench/clients.py).  A run is
timed from the client's start until the sink has every message (and the
client has its last reply), so store-and-forward Postfix is measured to
delivery, not to its 250.  Within each repetition the loads run in turn
and, for each load, every system once, in an order rotated per
repetition; medians over repetitions are reported, and each ratio is the
median of the per-repetition ratios (runs next to each other in time).
See docs/benchmarks.md for how to read the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import install  # noqa: E402
from bench.clients import CLIENTS, KIB, Client, Load, fullLoads, quickLoads  # noqa: E402
from bench.procstat import Usage  # noqa: E402
from bench.systems import SYSTEMS, System  # noqa: E402

BENCH = Path(__file__).resolve().parent
REFERENCE = {"smtp-source": ("smtprelay", "smtp-source"), "load": ("smtprelay-auth", "load-auth")}

# (system, client) in table order.  smtp-source drives every system (ours
# through a --no-auth tenant network); load.py drives ours with STARTTLS +
# AUTH and with AUTH in clear, and the peers without either.
VARIANTS = [
    ("direct", "smtp-source"),
    ("postfix", "smtp-source"),
    ("aiosmtpd", "smtp-source"),
    ("haraka", "smtp-source"),
    ("haraka-nodelay", "smtp-source"),
    ("smtprelay", "smtp-source"),
    ("smtprelay-auth", "load-tls"),
    ("smtprelay-auth", "load-auth"),
    ("direct", "load"),
    ("postfix", "load"),
    ("aiosmtpd", "load"),
    ("haraka", "load"),
    ("haraka-nodelay", "load"),
]
QUICK_SKIP = {"haraka-nodelay"}
QUICK_CLIENTS = {"smtp-source", "load-tls", "load-auth"}


@dataclass
class Run:
    load: str
    system: str
    client: str
    repetition: int
    ok: bool = False
    error: str | None = None
    elapsed: float | None = None
    msgPerSecond: float | None = None
    mbPerSecond: float | None = None
    p50: float | None = None
    p99: float | None = None
    cpu: float | None = None
    peakRSS: int | None = None
    connections: int | None = None
    messagesPerConnection: float | None = None


@dataclass
class Variant:
    system: System
    client: Client
    unavailable: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.system.key, self.client.key)

    @property
    def family(self) -> str:
        return "smtp-source" if self.client.key == "smtp-source" else "load"


def runOnce(variant: Variant, load: Load, repetition: int, timeout: float) -> Run:
    system, client = variant.system, variant.client
    run = Run(load.key, system.key, client.key, repetition)
    if not system.alive():
        run.error = f"{system.label} is not running any more"
        return run
    sink = system.sink
    mark = sink.mark()
    sink.expect(mark, load.messages)
    usage = Usage(system.roots())
    usage.start()
    outcome = client.run(
        system.port,
        load,
        timeout,
        account=getattr(system, "account", None),
        ca=getattr(getattr(system, "ca", None), "cert", None),
    )
    # A relay that answers before delivering (Postfix) still has work to do.
    arrived = sink.waitFor(mark, load.messages, timeout if outcome.error is None else 5.0)
    usage.stop()
    run.connections = sink.connectionsSince(mark)
    run.cpu, run.peakRSS = usage.cpu, usage.peakRSS
    if outcome.error is not None or arrived is None:
        got = sink.messages - mark.messages
        run.error = outcome.error or f"the sink got {got} of {load.messages} messages"
        return run
    run.ok = True
    run.elapsed = max(outcome.finished, arrived) - outcome.started
    run.msgPerSecond = load.messages / run.elapsed
    run.mbPerSecond = load.messages * load.size / run.elapsed / 2**20
    run.p50, run.p99 = outcome.p50, outcome.p99
    run.messagesPerConnection = load.messages / run.connections if run.connections else None
    return run


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    if value is None:
        return "-"
    value *= scale
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def rate(value) -> str:
    if value is None:
        return "-"
    return fmt(value, 0 if value >= 100 else (1 if value >= 10 else 2))


class Report:
    def __init__(self, loads: list[Load], variants: list[Variant], runs: list[Run]):
        self.loads, self.variants, self.runs = loads, variants, runs

    def _runs(self, load: Load, key: tuple[str, str], ok: bool = True) -> list[Run]:
        return [r for r in self.runs if r.load == load.key and (r.system, r.client) == key and (r.ok or not ok)]

    def ratio(self, load: Load, numerator: tuple[str, str], denominator: tuple[str, str]) -> float | None:
        """Median over repetitions of msg/s(numerator) / msg/s(denominator), same repetition only."""
        tops = {r.repetition: r.msgPerSecond for r in self._runs(load, numerator)}
        ratios = [tops[r.repetition] / r.msgPerSecond for r in self._runs(load, denominator) if r.repetition in tops]
        return median(ratios)

    def table(self) -> str:
        header = (
            "| load | system | client | msg/s | MB/s | p50 ms | p99 ms | CPU s | CPU ms/msg | peak RSS MB "
            "| msgs/upstream conn | smtprelay ÷ this |"
        )
        lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
        for load in self.loads:
            for v in self.variants:
                lines.append(self._row(load, v))
        return "\n".join(lines)

    def _row(self, load: Load, v: Variant) -> str:
        cells = [load.label, v.system.label, v.client.label]
        if v.unavailable:
            return "| " + " | ".join(cells + [v.unavailable] + [""] * 8) + " |"
        runs = self._runs(load, v.key)
        if not runs:
            failed = self._runs(load, v.key, ok=False)
            reason = failed[0].error if failed else "not run"
            return "| " + " | ".join(cells + [f"FAILED: {reason}"] + [""] * 8) + " |"
        m = lambda name: median([getattr(r, name) for r in runs])  # noqa: E731
        cpu, msgs = m("cpu"), load.messages
        cells += [
            rate(m("msgPerSecond")),
            fmt(m("mbPerSecond"), 2 if m("mbPerSecond") < 10 else 1),
            fmt(m("p50"), 1, 1000),
            fmt(m("p99"), 1, 1000),
            fmt(cpu, 2),
            fmt(None if cpu is None else cpu / msgs, 2, 1000),
            fmt(m("peakRSS"), 0, 1 / 2**20),
            fmt(m("messagesPerConnection"), 1),
            self._ratioCell(load, v),
        ]
        failed = len(self._runs(load, v.key, ok=False)) - len(runs)
        if failed:
            cells[-1] += f" ({failed} run(s) failed)"
        return "| " + " | ".join(cells) + " |"

    def _ratioCell(self, load: Load, v: Variant) -> str:
        reference = REFERENCE[v.family]
        if v.key == ("smtprelay-auth", "load-tls"):
            r = self.ratio(load, v.key, reference)
            return "-" if r is None else f"TLS: {r:.2f}× plain"
        if v.key == reference:
            return "reference"
        if v.system.key.startswith("smtprelay"):
            return "-"
        refVariant = next((x for x in self.variants if x.key == reference), None)
        if refVariant is None or refVariant.unavailable:
            return "n/a"
        r = self.ratio(load, reference, v.key)
        return "-" if r is None else f"{r:.2f}×"


def parseArguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/benchmarks.md.")
    p.add_argument(
        "--quick", action="store_true", help="smaller loads, one run, no Haraka NODELAY, no load.py against peers"
    )
    p.add_argument("--runs", type=int, help="repetitions (default 3, 1 with --quick)")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--clients", help=f"comma-separated subset of {','.join(CLIENTS)}")
    p.add_argument("--loads", help="comma-separated indexes (0-3) of the loads to run")
    p.add_argument("--scale", type=float, default=1.0, help="multiply message counts (e.g. 0.5)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--no-install", dest="install", action="store_false", help="do not install peers")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where to write the report")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configurations)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    options = parseArguments(argv)
    runs_ = options.runs or (1 if options.quick else 3)
    loads = quickLoads() if options.quick else fullLoads()
    if options.loads:
        loads = [loads[int(i)] for i in options.loads.split(",")]
    if options.scale != 1.0:
        loads = [Load(max(1, round(x.messages * options.scale)), x.size, x.sessions) for x in loads]
    wantSystems = (
        set(options.systems.split(",")) if options.systems else set(SYSTEMS) - (QUICK_SKIP if options.quick else set())
    )
    wantClients = (
        set(options.clients.split(",")) if options.clients else (QUICK_CLIENTS if options.quick else set(CLIENTS))
    )
    plan = [(s, c) for s, c in VARIANTS if s in wantSystems and c in wantClients]
    if not plan:
        print("nothing to run", file=sys.stderr)
        return 2
    if options.install:
        install.ensure()
    versions = install.versions()

    work = Path(tempfile.mkdtemp(prefix="smtprelay-bench-"))
    work.chmod(0o755)  # Postfix's daemons (user postfix) must reach their directories
    systems: dict[str, System] = {}
    variants: list[Variant] = []
    runs: list[Run] = []
    started = datetime.datetime.now()
    try:
        for key in dict.fromkeys(s for s, _ in plan):
            system = SYSTEMS[key]()
            log(f"starting {system.label} ({key})")
            try:
                system.start(work)
            except Exception as e:  # noqa: BLE001 - report the system as failed, compare the rest
                log(f"  {key} did not start: {e}")
                system.startError = f"did not start: {e}"
            systems[key] = system
        for s, c in plan:
            system, client = systems[s], CLIENTS[c]
            v = Variant(system, client, getattr(system, "startError", None) or system.unavailable(client))
            variants.append(v)
            if v.unavailable is None:
                warm = runOnce(v, Load(20, KIB, 2), 0, 120)
                if not warm.ok:
                    v.unavailable = f"FAILED warm-up: {warm.error}"
                    log(f"  warm-up {s}/{c}: {warm.error}")
        active = [v for v in variants if v.unavailable is None]
        for repetition in range(1, runs_ + 1):
            for load in loads:
                shift = (repetition - 1) % max(1, len(active))
                for v in active[shift:] + active[:shift]:
                    try:
                        run = runOnce(v, load, repetition, options.timeout)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        run = Run(load.key, v.system.key, v.client.key, repetition, error=f"{type(e).__name__}: {e}")
                    runs.append(run)
                    log(
                        f"[{repetition}/{runs_}] {load.label:<26} {v.system.key + '/' + v.client.key:<28} "
                        + (
                            f"{run.msgPerSecond:8.1f} msg/s {run.mbPerSecond:7.2f} MB/s {run.elapsed:6.2f} s "
                            f"cpu {fmt(run.cpu, 2)} s conns {run.connections}"
                            if run.ok
                            else f"FAILED: {run.error}"
                        )
                    )
                    time.sleep(0.2)
    finally:
        for system in systems.values():
            try:
                system.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping {system.key}: {e}")
        if options.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report = Report(loads, variants, runs)
    text = render(report, options, runs_, versions, started)
    print(text)
    options.results.mkdir(parents=True, exist_ok=True)
    stem = options.results / started.strftime("%Y%m%d-%H%M%S")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"versions": versions, "loads": [asdict(x) for x in loads], "runs": [asdict(r) for r in runs]}, indent=1
        )
    )
    log(f"written to {stem}.md (raw runs: {stem}.json)")
    return (
        0
        if all(r.ok for r in runs) and not any(v.unavailable and v.unavailable.startswith("FAILED") for v in variants)
        else 1
    )


def render(report: Report, options, runs_: int, versions: dict, started: datetime.datetime) -> str:
    v = versions
    mode = "QUICK (1 run, smaller loads)" if options.quick else f"median of {runs_}"
    lines = [
        f"# smtprelay vs peers, {started:%Y-%m-%d %H:%M} ({mode})",
        "",
        f"{os.cpu_count()} CPUs, {os.uname().release}; Postfix {v['postfix']}, Haraka {v['haraka']} "
        f"(node {v['node']}), aiosmtpd {v['aiosmtpd']} + aiosmtplib {v['aiosmtplib']}, "
        f"Python {v['python']}, Twisted {v['twisted']}.",
        "",
        report.table(),
        "",
        "End to end: client start until the sink has every message. MB = 2^20 octets of payload "
        "(headers not counted). Latency: MAIL FROM to the reply to the final dot, load.py only "
        "(smtp-source cannot tell). CPU and peak RSS: the relay's processes only (all of Postfix's; "
        "none for direct). msgs/upstream conn: messages ÷ connections the sink saw during the run. "
        "smtprelay ÷ this: msg/s of our relay over this system's, same client, same repetition "
        "(median); > 1 means smtprelay is faster. Reference rows: smtp-source → smtprelay via a "
        "no-auth network; load.py → smtprelay with AUTH in clear (the peers get no AUTH at all).",
    ]
    notes = sorted({v.unavailable for v in report.variants if v.unavailable})
    failures = [r for r in report.runs if not r.ok]
    if notes or failures:
        lines += ["", "Notes:"]
        lines += [f"- {n}" for n in notes]
        lines += [f"- failed run: {r.system}/{r.client} {r.load} rep {r.repetition}: {r.error}" for r in failures]
    return "\n".join(lines) + "\n"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
