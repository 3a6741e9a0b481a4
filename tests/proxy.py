"""A TCP proxy the tests control: put it between a client and PostgreSQL, then cut it to
simulate an outage (never stop the machine's real server) and restore it."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """127.0.0.1:<port> → target. cut() closes the listener and every live connection, so the
    writer sees what a dead database looks like; restore() listens again on the same port;
    restore(stall=True) accepts connections and never answers (a hung database); freeze()
    stops every byte on the live connections too, which stay open (a stalled network path),
    until thaw()."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._stalled = False

    def freeze(self) -> None:
        self._stalled = True
        self._flowing.clear()

    def thaw(self) -> None:
        self._stalled = False
        self._flowing.set()

    def restore(self, stall: bool = False) -> None:
        self.cut()
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        listener.settimeout(0.05)
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, args=(listener, self._stop, stall))
        self._acceptor.start()

    def cut(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._acceptor.join()
        self._stop = None
        with self._lock:
            live = list(self._conns)
        for sock in live:
            self._kill(sock)

    def _accept(self, listener: socket.socket, stop: threading.Event, stall: bool) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                if stall or self._stalled:
                    with self._lock:
                        self._conns.add(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=3)
                except OSError:
                    client.close()
                    continue
                for sock in (client, upstream):
                    sock.settimeout(None)
                with self._lock:
                    self._conns |= {client, upstream}
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()  # frozen: held here, the sender sees an open connection
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._kill(src)
            self._kill(dst)

    def _kill(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
        sock.close()
