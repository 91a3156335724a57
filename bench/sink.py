"""
A discarding SMTP sink for benchmarks: accepts everything, keeps nothing but
counters.  Runs in a thread; `with Sink() as sink: sink.port`.
"""

from __future__ import annotations

import socket
import socketserver
import threading

END = b"\r\n.\r\n"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sink: Sink = self.server.sink
        sock: socket.socket = self.request
        sock.settimeout(300)
        with sink.lock:
            sink.connections += 1
        sock.sendall(b"220 sink ESMTP\r\n")
        buffer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                verb = line[:4].upper()
                if verb == b"DATA":
                    sock.sendall(b"354 go\r\n")
                    buffer = self._data(sock, buffer)
                    if buffer is None:
                        return
                    sock.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == b"EHLO":
                    sock.sendall(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"QUIT":
                    sock.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    sock.sendall(b"250 2.0.0 Ok\r\n")

    def _data(self, sock: socket.socket, buffer: bytes) -> bytes | None:
        """Discard up to the end marker; return what follows it."""
        sink: Sink = self.server.sink
        size = 0
        tail = b"\r\n"  # the DATA line's CRLF: the message may be empty
        while True:
            window = tail + buffer
            end = window.find(END)
            if end >= 0:
                size += max(0, end - len(tail))
                with sink.lock:
                    sink.received += size
                    sink.messages += 1
                return window[end + len(END) :]
            size += len(buffer)
            tail = window[-4:]
            buffer = sock.recv(65536)
            if not buffer:
                return None


class Sink:
    """@ivar messages, received, connections: what the sink has seen so far."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages = 0
        self.received = 0
        self.connections = 0
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.sink = self
        self.port = self._server.server_address[1]

    def __enter__(self) -> Sink:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
