"""A TCP forwarder on 127.0.0.1 that a test can switch on and off, to make the real MariaDB
unreachable and reachable again without touching the shared server."""
from __future__ import annotations

import socket
import threading


def reserve_port() -> socket.socket:
    """A port of our own for as long as the returned socket is open: bound (port 0: the
    kernel picks) but not listening, so connections to it are refused; a listener with
    SO_REUSEPORT can bind the same port alongside it. While the proxy is "down", nobody
    else (no other test, no other server) can take its port, as a bind-close-rebind could."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.reservation = reserve_port()
        self.port = self.reservation.getsockname()[1]
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut_pattern: bytes | None = None
        self.stop_on_cut = False
        self.cut_done = threading.Event()

    def cut_after(self, pattern: bytes, then_stop: bool = False) -> None:
        """The next time the client sends ``pattern``, pass it on, then drop the connection
        before the server's answer gets back (a COMMIT whose reply is lost). With
        ``then_stop`` the proxy also stops listening: the database seems gone."""
        self.cut_done.clear()
        self.stop_on_cut = then_stop
        self.cut_pattern = pattern

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past TIME_WAITs of earlier links
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)   # beside the reservation
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and cut every forwarded connection, like a server going away."""
        self._stop_listening()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.connections.clear()

    def _stop_listening(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept()
            except OSError:
                pass
            self.listener.close()
            self.listener = None

    def _cut(self, *socks: socket.socket) -> None:
        if self.stop_on_cut:
            self.stop()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.cut_done.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.connections += [client, upstream]
            link = {"cut": False}
            threading.Thread(target=self._pipe, args=(client, upstream, link, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, link, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, link: dict, outbound: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or link["cut"]:
                    break
                pattern = self.cut_pattern
                if outbound and pattern is not None and pattern in data:
                    self.cut_pattern = None
                    link["cut"] = True       # the answer will not be passed back
                    sink.sendall(data)
                    if self.stop_on_cut:
                        self._stop_listening()     # before the writer can look again
                    threading.Timer(0.5, self._cut, args=(source, sink)).start()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
