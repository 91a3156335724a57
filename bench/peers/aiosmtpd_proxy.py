"""
A small forwarding SMTP proxy on aiosmtpd, the Python peer of the
benchmark: it takes a whole message (aiosmtpd reads DATA into memory), sends
it to the upstream with aiosmtplib over a pooled connection, and answers the
client with the upstream's reply: 250 only after the upstream's 250, like
smtprelay (but buffering each message instead of streaming it).

    python aiosmtpd_proxy.py --listen 127.0.0.1:2526 --upstream 127.0.0.1:2525

Runs in its own virtualenv (aiosmtpd, aiosmtplib); bench/compare.py makes it.
A pooled upstream connection may have died on the upstream's idle timeout:
a message that fails on a reused connection is retried once on a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiosmtplib
from aiosmtpd.smtp import SMTP


def hostPort(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


class Pool:
    """Idle upstream connections, reused last in, first out."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[aiosmtplib.SMTP] = []

    async def get(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self.idle:
            client = self.idle.pop()
            if client.is_connected:
                return client, True
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout, start_tls=False,
            local_hostname="aiosmtpd.bench.invalid",
        )  # fmt: skip
        await client.connect()
        return client, False

    def put(self, client: aiosmtplib.SMTP) -> None:
        self.idle.append(client)


class ForwardingHandler:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def handle_DATA(self, server, session, envelope) -> str:
        for attempt in (1, 2):
            try:
                client, reused = await self.pool.get()
            except (OSError, aiosmtplib.SMTPException) as e:
                return f"451 4.4.1 upstream unreachable: {e}"
            try:
                _, reply = await client.sendmail(
                    envelope.mail_from, envelope.rcpt_tos, envelope.original_content,
                    mail_options=envelope.mail_options,
                )  # fmt: skip
            except aiosmtplib.SMTPServerDisconnected:
                client.close()
                if reused and attempt == 1:
                    continue  # died while idle: once more on a fresh connection
                return "451 4.4.2 upstream connection lost"
            except aiosmtplib.SMTPRecipientsRefused as e:
                await self._reset(client)
                first = e.recipients[0]
                return f"{first.code} {first.message}"
            except aiosmtplib.SMTPResponseException as e:
                await self._reset(client)
                return f"{e.code} {e.message}"
            except (OSError, aiosmtplib.SMTPException) as e:
                client.close()
                return f"451 4.4.2 upstream error: {e}"
            self.pool.put(client)
            return f"250 2.0.0 Ok: {reply}"
        return "451 4.4.2 upstream connection lost"

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except (OSError, aiosmtplib.SMTPException):
            client.close()
            return
        self.pool.put(client)


async def serve(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(*options.upstream, timeout=options.timeout)
    handler = ForwardingHandler(pool)

    def factory() -> SMTP:
        return SMTP(handler, hostname="aiosmtpd.bench.invalid", data_size_limit=options.max_size, timeout=300)

    server = await loop.create_server(factory, *options.listen, backlog=256)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=hostPort, required=True, help="host:port")
    parser.add_argument("--upstream", type=hostPort, required=True, help="host:port")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--max-size", type=int, default=64 << 20)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
