"""A worker's sockets and its graceful stop.

On SIGTERM (`make serve`'s Ctrl-C, `docker stop`, Kubernetes) a worker first drains for
`SHUTDOWN_DRAIN_S`: it keeps answering, but /readyz says 503 `draining` so a load balancer
stops sending, and every answer carries `Connection: close` so no client keeps a connection a
closing server could race. Then, for REFUSE_S, new scoring requests get a clean 503 with
Retry-After, so clients that ignore readiness back off instead of queueing new connections in
a backlog that closing the listener would reset. Then it stops listening (new connections
are refused at once) and hands over to uvicorn's own stop, which finishes every request it
accepted before the process exits."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("riskloop.serving")


def listening_sockets() -> Iterator[tuple[int, str]]:
    """(fd, IP address) of each listening TCP socket this process holds (a BentoML worker
    gets its server's socket as an inherited file descriptor)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                if sock.type == socket.SOCK_STREAM and accepting:
                    yield int(name), sock.getsockname()[0].split("%")[0]
            except OSError:
                continue


REFUSE_S = 0.5


class Drain:
    """Installs the SIGTERM handler described above, in front of the server's own."""

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.draining = False  # answering, with Connection: close
        self.refusing = False  # answering 503 to new scoring requests

    def phase(self) -> str | None:
        """None while serving; "draining", then "refusing" after SIGTERM."""
        return "refusing" if self.refusing else "draining" if self.draining else None

    def install(self) -> None:
        try:
            stop = signal.getsignal(signal.SIGTERM)  # uvicorn's: it sets should_exit
            signal.signal(signal.SIGTERM, lambda sig, frame: self._start(stop, sig, frame))
        except ValueError:  # not the main thread: the server's own stop applies
            log.warning("graceful drain not installed (not in the main thread)")

    def _start(self, stop: Callable | int | None, sig: int, frame) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("SIGTERM: draining for %.1f s, then stopping", self.drain_s)
        timer = threading.Timer(self.drain_s, self._refuse, args=(stop, sig, frame))
        timer.daemon = True
        timer.start()

    def _refuse(self, stop: Callable | int | None, sig: int, frame) -> None:
        self.refusing = True
        timer = threading.Timer(REFUSE_S, self._stop, args=(stop, sig, frame))
        timer.daemon = True
        timer.start()

    @staticmethod
    def _stop(stop: Callable | int | None, sig: int, frame) -> None:
        for fd, _ in list(listening_sockets()):
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RD)  # refuse new connections now
        if callable(stop):
            stop(sig, frame)
        else:  # no server handler: the default action
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
