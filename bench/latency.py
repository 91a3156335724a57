"""
The relays against a distant upstream: every system relays into a sink
whose every reply comes DELAY ms (default 25) after its command
(bench/delaysink.py), once offering PIPELINING and CHUNKING (as Exchange
Online and Postfix >= 3.4 do) and once PIPELINING alone; 1 KiB messages
over 1 session and over 20.  Prints one table (also written to
bench/results/<timestamp>-latency.md, raw runs beside it as .json).

    make bench                      # runs bench.compare, then this
    python -m bench.latency --quick # fewer messages, one run

The clients and the timing are bench.compare's: a run lasts from the
client's start until the sink has every message, so store-and-forward
Postfix is measured to delivery.  "ms/msg" is that time per message of
one session (for 20 sessions, per message of one session: elapsed × 20 ÷
messages); "p50" is what the client waited from MAIL FROM to the reply to
its dot (for Postfix, its queue's 250, not the delivery).  The ratio
column is smtprelay's msg/s over the system's, in the same repetition.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import install  # noqa: E402
from bench.clients import CLIENTS, KIB, Load  # noqa: E402
from bench.compare import Run, Variant, fmt, log, median, rate, runOnce  # noqa: E402
from bench.smtpsink import DelaySink  # noqa: E402
from bench.systems import SYSTEMS, System  # noqa: E402

BENCH = Path(__file__).resolve().parent
MODES = {"pipelining+chunking": True, "pipelining": False}  # mode -> the sink offers CHUNKING
# (system, client): ours with AUTH in clear, the peers without AUTH (they are not set up for it).
VARIANTS = [("smtprelay-auth", "load-auth"), ("postfix", "load"), ("aiosmtpd", "load"), ("haraka", "load")]
REFERENCE = ("smtprelay-auth", "load-auth")


def loads(quick: bool) -> list[Load]:
    return [Load(40, KIB, 1), Load(200, KIB, 20)] if quick else [Load(200, KIB, 1), Load(2000, KIB, 20)]


def parseArguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/performance.md.")
    p.add_argument("--quick", action="store_true", help="fewer messages, one run")
    p.add_argument("--runs", type=int, help="repetitions (default 3, 1 with --quick)")
    p.add_argument("--delay", type=float, default=25.0, help="ms between each upstream command and its reply")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(s for s, _ in VARIANTS)}")
    p.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--no-install", dest="install", action="store_false", help="do not install peers")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where to write the report")
    return p.parse_args(argv)


def main(argv=None) -> int:
    options = parseArguments(argv)
    repetitions = options.runs or (1 if options.quick else 3)
    wanted = set(options.systems.split(",")) if options.systems else {s for s, _ in VARIANTS}
    modes = options.modes.split(",") if options.modes else list(MODES)
    if not wanted or any(m not in MODES for m in modes):
        print(f"modes are {', '.join(MODES)}", file=sys.stderr)
        return 2
    if options.install:
        install.ensure()
    versions = install.versions()
    started = datetime.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="smtprelay-latency-"))
    work.chmod(0o755)  # Postfix's daemons (user postfix) must reach their directories
    runs: list[Run] = []
    labels: dict[str, str] = {}
    try:
        for mode in modes:
            runs += measureMode(mode, options, repetitions, wanted, work / mode, labels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(runs, modes, loads(options.quick), labels, options, repetitions, versions, started)
    print(text)
    options.results.mkdir(parents=True, exist_ok=True)
    stem = options.results / f"{started:%Y%m%d-%H%M%S}-latency"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"versions": versions, "runs": [asdict(r) for r in runs]}))
    log(f"written to {stem}.md")
    return 0 if runs and all(r.ok for r in runs) else 1


def measureMode(mode: str, options, repetitions: int, wanted: set[str], work: Path, labels) -> list[Run]:
    """Every wanted system against its own distant sink in this mode: [Run] with C{load} = "MODE LOAD"."""
    work.mkdir(parents=True)
    variants: list[Variant] = []
    runs: list[Run] = []
    try:
        for key, clientKey in VARIANTS:
            if key not in wanted:
                continue
            system: System = SYSTEMS[key]()
            labels[key] = system.label
            log(f"{mode}: starting {system.label}")
            try:
                system.start(work, DelaySink(options.delay, chunking=MODES[mode]))
            except Exception as e:  # noqa: BLE001 - the others are still compared
                log(f"  {key} did not start: {e}")
                runs.append(Run(f"{mode} *", key, clientKey, 0, error=f"did not start: {e}"))
                system.stop()
                continue
            variant = Variant(system, CLIENTS[clientKey])
            warm = runOnce(variant, Load(10, KIB, 2), 0, 120)
            if not warm.ok:
                runs.append(Run(f"{mode} *", key, clientKey, 0, error=f"warm-up: {warm.error}"))
                continue
            variants.append(variant)
        for repetition in range(1, repetitions + 1):
            for load in loads(options.quick):
                shift = (repetition - 1) % max(1, len(variants))
                for v in variants[shift:] + variants[:shift]:
                    try:
                        run = runOnce(v, load, repetition, options.timeout)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        run = Run(load.key, v.system.key, v.client.key, repetition, error=f"{type(e).__name__}: {e}")
                    run.load = f"{mode} {load.key}"
                    runs.append(run)
                    log(
                        f"[{repetition}/{repetitions}] {mode:<20} {load.label:<24} {v.system.key:<16} "
                        + (
                            f"{run.msgPerSecond:7.1f} msg/s {perMessage(run, load):7.1f} ms/msg conns {run.connections}"
                            if run.ok
                            else f"FAILED: {run.error}"
                        )
                    )
    finally:
        for v in variants:
            v.system.stop()
    return runs


def perMessage(run: Run, load: Load) -> float | None:
    """Milliseconds per message of one session."""
    return None if run.elapsed is None else run.elapsed * load.sessions / load.messages * 1000


def render(runs: list[Run], modes, loadList, labels, options, repetitions, versions, started) -> str:
    header = (
        "| upstream offers | load | system | msg/s | ms/msg | p50 ms | p99 ms | msgs/upstream conn | smtprelay ÷ this |"
    )
    lines = [
        f"# Distant upstream ({options.delay:g} ms per reply), {started:%Y-%m-%d %H:%M} "
        f"({'QUICK, 1 run' if options.quick else f'median of {repetitions}'})",
        "",
        f"{os.cpu_count()} CPUs; Postfix {versions['postfix']}, Haraka {versions['haraka']}, "
        f"aiosmtpd {versions['aiosmtpd']}, Twisted {versions['twisted']}.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    for mode in modes:
        for load in loadList:
            key = f"{mode} {load.key}"
            for system, _ in VARIANTS:
                if system not in labels:
                    continue
                mine = [r for r in runs if r.load == key and r.system == system]
                good = [r for r in mine if r.ok]
                cells = [mode, load.label, labels[system]]
                if not good:
                    broken = [r for r in runs if r.system == system and r.load in (key, f"{mode} *")]
                    cells += [f"FAILED: {broken[0].error if broken else 'not run'}"] + [""] * 6
                else:
                    m = lambda name, good=good: median([getattr(r, name) for r in good])  # noqa: E731
                    cells += [
                        rate(m("msgPerSecond")),
                        fmt(median([perMessage(r, load) for r in good]), 1),
                        fmt(m("p50"), 1, 1000),
                        fmt(m("p99"), 1, 1000),
                        fmt(m("messagesPerConnection"), 1),
                        ratioCell(runs, key, system),
                    ]
                lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "ms/msg: end to end (client start to the sink's last message) per message of one session. "
        "p50/p99: MAIL FROM to the reply to the dot, as the client saw it. msgs/upstream conn: "
        "messages ÷ connections the sink saw. smtprelay ÷ this: msg/s ratio within a repetition (median).",
    ]
    failures = [r for r in runs if not r.ok]
    if failures:
        lines += ["", "Failed runs:"] + [f"- {r.system} {r.load} rep {r.repetition}: {r.error}" for r in failures]
    return "\n".join(lines) + "\n"


def ratioCell(runs: list[Run], key: str, system: str) -> str:
    if system == REFERENCE[0]:
        return "reference"
    ours = {r.repetition: r.msgPerSecond for r in runs if r.load == key and r.system == REFERENCE[0] and r.ok}
    ratio = median(
        [
            ours[r.repetition] / r.msgPerSecond
            for r in runs
            if r.load == key and r.system == system and r.ok and r.repetition in ours
        ]
    )
    return "-" if ratio is None else f"{ratio:.2f}×"


if __name__ == "__main__":
    sys.exit(main())
