"""
Many connections on one relay process: 10,000 idle sessions held open while
1,000 sessions relay at the same time.

    .venv/bin/python bench/connections.py [--idle 10000] [--busy 1000] [--messages 5]

The relay runs as `twistd smtprelay --workers=1` (one process) with its
caps raised for the run; the upstream is Postfix's smtp-sink when installed
(`make bench` installs it), else bench/sink.py.  Prints the relay's RSS with
the idle sessions, the messages relayed and every error; exit status 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import status  # noqa: E402
from bench.sink import Sink  # noqa: E402
from tests.support.certs import makeCA  # noqa: E402
from tests.support.relay import RelayProcess, freePort  # noqa: E402

MESSAGE = b"From: a@example.com\r\nSubject: many\r\n\r\n" + b"x" * 76 + b"\r\n"


async def reply(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    return line


async def command(reader, writer, line: bytes, code: bytes) -> None:
    writer.write(line + b"\r\n")
    got = await reply(reader)
    if not got.startswith(code):
        raise RuntimeError(f"{line[:20]!r}: {got!r}")


async def idleSession(port: int, held: list, errors: Counter) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await reply(reader)
        if not greeting.startswith(b"220"):
            raise RuntimeError(greeting)
        held.append(writer)
    except Exception as e:  # noqa: BLE001 - counted, reported
        errors[f"idle: {type(e).__name__}: {str(e)[:60]}"] += 1


async def busySession(
    port: int,
    credentials: bytes,
    messages: int,
    ready: asyncio.Queue,
    go: asyncio.Event,
    done: Counter,
    errors: Counter,
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader)
        await command(reader, writer, b"EHLO busy.bench", b"250")
        await command(reader, writer, b"AUTH PLAIN " + credentials, b"235")
    except Exception as e:  # noqa: BLE001 - counted, reported
        errors[f"busy: {type(e).__name__}: {str(e)[:60]}"] += 1
        return
    finally:
        ready.put_nowait(None)
    await go.wait()  # every session logged in: now all relay at once
    try:
        for _ in range(messages):
            await command(reader, writer, b"MAIL FROM:<a@example.com>", b"250")
            await command(reader, writer, b"RCPT TO:<b@example.net>", b"250")
            await command(reader, writer, b"DATA", b"354")
            await command(reader, writer, MESSAGE + b".", b"250")
            done["relayed"] += 1
        await command(reader, writer, b"QUIT", b"221")
        writer.close()
    except Exception as e:  # noqa: BLE001 - counted, reported
        errors[f"busy: {type(e).__name__}: {str(e)[:60]}"] += 1


async def run(relay: RelayProcess, account, args) -> int:
    errors: Counter = Counter()
    held: list = []
    pid = relay.process.pid
    before = status(pid, "VmRSS")
    started = time.monotonic()
    # In batches no bigger than the listen backlog (Twisted's default is 50):
    # beyond it the kernel drops handshakes and clients wait for retransmissions.
    for start in range(0, args.idle, 50):
        await asyncio.gather(*(idleSession(relay.port, held, errors) for _ in range(min(50, args.idle - start))))
    idleRSS = status(pid, "VmRSS")
    print(f"{len(held)} idle sessions open in {time.monotonic() - started:.1f} s; relay RSS {before / 1024:.0f} MB "
          f"-> {idleRSS / 1024:.0f} MB ({(idleRSS - before) / max(1, len(held)):.1f} kB per session)")  # fmt: skip
    credentials = b64encode(f"\0{account.username}\0{account.password}".encode())
    done: Counter = Counter()
    ready: asyncio.Queue = asyncio.Queue()
    go = asyncio.Event()
    sessions = []
    for start in range(0, args.busy, 50):  # connect in batches, as above
        sessions += [
            asyncio.create_task(busySession(relay.port, credentials, args.messages, ready, go, done, errors))
            for _ in range(min(50, args.busy - start))
        ]
        for _ in range(min(50, args.busy - start)):
            await ready.get()
    started = time.monotonic()
    go.set()
    await asyncio.gather(*sessions)
    elapsed = time.monotonic() - started
    print(f"{args.busy} concurrent sessions relayed {done['relayed']} messages in {elapsed:.1f} s "
          f"({done['relayed'] / elapsed:.0f} msg/s) with {len(held)} idle sessions still open; "
          f"relay RSS {status(pid, 'VmRSS') / 1024:.0f} MB, peak {status(pid, 'VmHWM') / 1024:.0f} MB")  # fmt: skip
    for writer in held:
        writer.close()
    print("errors: " + (", ".join(f"{k} x{v}" for k, v in errors.items()) or "none"))
    return 1 if errors or done["relayed"] != args.busy * args.messages else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--busy", type=int, default=1_000)
    parser.add_argument("--messages", type=int, default=5, help="messages per busy session")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the relay inherits it
    needed = args.idle + args.busy + 100
    if hard < needed:
        sys.exit(f"needs {needed} file descriptors, the hard limit is {hard}")
    with tempfile.TemporaryDirectory() as tmp:
        sinkPort = freePort()
        sinkBinary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if Path(sinkBinary).exists():
            sink = subprocess.Popen([sinkBinary, "-u", "nobody", f"127.0.0.1:{sinkPort}", "1024"])
            fallback = None
        else:
            fallback = Sink().__enter__()
            sinkPort, sink = fallback.port, None
        relay = RelayProcess(
            Path(tmp) / "relay", makeCA(Path(tmp)), "--workers=1", "--allow-insecure-auth",
            f"--max-connections={needed}", f"--max-connections-per-ip={needed}", "--upstream-max-connections=200",
        )  # fmt: skip
        try:
            account = relay.addTenant("many", f"smtp://127.0.0.1:{sinkPort}")
            return asyncio.run(run(relay, account, args))
        finally:
            relay.stop()
            if sink is not None:
                sink.terminate()
            if fallback is not None:
                fallback.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
