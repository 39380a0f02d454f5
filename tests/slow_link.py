"""A slow network link for tests: a TCP proxy on loopback that passes what the server sends at a
limited rate per connection (a store far away, a saturated link). What the client sends passes
as it comes."""

import socket
import threading
import time

from shared.embedded_redis import free_port

CHUNK = 4096


class SlowLink:
    """``127.0.0.1:<port>`` forwarding to ``target_port`` on loopback, each connection's replies at
    ``bytes_per_second``. Use as a context manager; closing it cuts every connection."""

    def __init__(self, target_port: int, bytes_per_second: int):
        self.target_port = target_port
        self.bytes_per_second = bytes_per_second
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "SlowLink":
        threading.Thread(target=self._accept, daemon=True, name="slow-link").start()
        return self

    def __exit__(self, *_) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.bytes_per_second), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        due = time.monotonic()
        try:
            while data := source.recv(CHUNK):
                if rate is not None:  # each chunk takes its time on the link (no credit saved up while idle)
                    due = max(due, time.monotonic()) + len(data) / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
