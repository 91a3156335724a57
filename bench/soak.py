"""
Soak: N concurrent clients relay through a real `twistd smtprelay` for T
seconds while the upstream misbehaves at random (slow replies, tempfails,
drops after 354, resets mid-message, hangs past the relay's timeout).

    .venv/bin/python bench/soak.py [--clients 20] [--seconds 300] [--workers 1]

Every message carries a unique Message-ID; at the end the messages the
clients got 250 for are compared with what the upstream completed:

  lost        250 to the client, never completed upstream     (must be 0)
  duplicated  completed upstream, but the client saw no 250    (RFC 1047: the reply to the dot was lost)

and the relay's RSS (all its processes, with --workers) is printed over
time (it must stay flat).  Exit status 1
when anything was lost.
"""

from __future__ import annotations

import argparse
import random
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import descendants, status  # noqa: E402
from tests.support.certs import makeCA  # noqa: E402
from tests.support.relay import RelayProcess, upstreamURL  # noqa: E402
from tests.support.upstream import UpstreamServer  # noqa: E402

FAULTS = {
    "none": lambda up: None,
    "slow": lambda up: up.setDelay("EOD", 0.3),
    "tempfail": lambda up: up.setReply("EOD", "451 4.3.0 busy, try later"),
    "close-after-354": lambda up: up.setDropAfter("DATA"),
    "reset-mid-data": lambda up: up.setDropAfter("DATA", afterBytes=2000, reset=True),
    "refuse-rcpt": lambda up: up.setReply("RCPT", "450 4.2.1 mailbox busy"),
    "hang": lambda up: up.setHang("EOD"),
}


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.accepted: set[str] = set()
        self.replies: Counter = Counter()
        self.errors: Counter = Counter()


def client(port: int, context, account, results: Results, stop: float, number: int) -> None:
    sequence = 0
    rng = random.Random(number)
    while time.monotonic() < stop:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.starttls(context=context)
                smtp.login(account.username, account.password)
                for _ in range(rng.randint(1, 20)):
                    if time.monotonic() >= stop:
                        break
                    sequence += 1
                    messageId = f"soak-{number}-{sequence}@bench.test"
                    body = ("x" * 76 + "\r\n") * rng.choice([1, 13, 260])  # about 100 B, 1 KB, 20 KB
                    message = f"From: a@example.com\r\nMessage-ID: <{messageId}>\r\n\r\n{body}\r\n"
                    with results.lock:
                        results.sent += 1
                    try:
                        smtp.sendmail("a@example.com", ["b@example.net"], message)
                    except smtplib.SMTPResponseException as e:
                        with results.lock:
                            results.replies[e.smtp_code] += 1
                        smtp.rset()
                        continue
                    except smtplib.SMTPRecipientsRefused as e:
                        with results.lock:
                            results.replies[next(iter(e.recipients.values()))[0]] += 1
                        continue
                    with results.lock:
                        results.accepted.add(messageId)
                        results.replies[250] += 1
        except (OSError, smtplib.SMTPException) as e:
            with results.lock:
                results.errors[type(e).__name__] += 1


def relayRSS(relay: RelayProcess) -> int:
    """kB resident in the relay's processes (the parent and any workers)."""
    return sum(status(pid, "VmRSS") for pid in descendants([relay.process.pid]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=1, help="relay processes (as --workers)")
    parser.add_argument("--fault-every", type=float, default=5.0, help="seconds between fault changes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ca = makeCA(Path(tmp))
        relay = RelayProcess(Path(tmp) / "relay", ca, f"--workers={args.workers}", "--upstream-timeout=2")
        try:
            with UpstreamServer(tls=ca.issue(Path(tmp), "upstream"), timeout=30) as up:
                account = relay.addTenant("soak", upstreamURL(up, ca=str(ca.cert), timeout="2"))
                results = Results()
                stop = time.monotonic() + args.seconds
                context = relay.clientContext()
                threads = [
                    threading.Thread(target=client, args=(relay.port, context, account, results, stop, n), daemon=True)
                    for n in range(args.clients)
                ]
                for thread in threads:
                    thread.start()
                rss, faults = [], Counter()
                rng = random.Random(0)
                started = time.monotonic()
                while time.monotonic() < stop:
                    up.clearFaults()
                    fault = rng.choice(list(FAULTS))
                    FAULTS[fault](up)
                    faults[fault] += 1
                    time.sleep(min(args.fault_every, max(0.0, stop - time.monotonic())))
                    rss.append((time.monotonic() - started, relayRSS(relay) / 1024))
                up.clearFaults()
                for thread in threads:
                    thread.join(60)
                time.sleep(3)  # hung transactions time out upstream
                completed = {m.data.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode() for m in up.messages}
        finally:
            relay.stop()
        lost = results.accepted - completed
        duplicated = completed - results.accepted
        print(
            f"clients {args.clients}, {args.seconds:.0f} s, faults: " + ", ".join(f"{k} {v}" for k, v in faults.items())
        )
        print(f"sent {results.sent}, 250 {results.replies[250]}, upstream completed {len(completed)}, "
              f"lost {len(lost)}, duplicated {len(duplicated)}")  # fmt: skip
        print("replies: " + ", ".join(f"{code}: {n}" for code, n in sorted(results.replies.items())))
        print("client errors: " + (", ".join(f"{k}: {v}" for k, v in results.errors.items()) or "none"))
        step = max(1, len(rss) // 12)
        print("relay RSS (MB) over time: " + ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in rss[::step]))
        print(f"RSS first {rss[0][1]:.1f} MB, last {rss[-1][1]:.1f} MB, max {max(mb for _, mb in rss):.1f} MB")
        return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
