"""API-key checks and per-key rate limiting, used by the gateway middleware
(serving/fastpath.py). Health, metrics and docs endpoints are exempt."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

Scope = dict
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
EXEMPT = ("/livez", "/readyz", "/metrics", "/healthz", "/docs", "/openapi.json", "/docs.json")


def key_id(key: str) -> str:
    """A short, non-reversible label for a key (for metrics and logs, never the key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def match_key(candidate: str | None, keys: list[str]) -> str | None:
    """Constant-time comparison against every configured key (rotation: several valid)."""
    if not candidate:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(candidate.encode(), key.encode()):
            found = key
    return found


class FixedWindowLimiter:
    """Per-key fixed windows, counted in a small memory-mapped file that every worker process
    of one server opens (`path`, by default `limiter_path()`), under an exclusive flock: the
    limit holds for the server as a whole, whatever the number of workers. A window starts at
    a key's first request. Work is limited as well as requests: rows scored and rows
    explained (exact contributions cost ~100x a plain score) per key per window, charged once
    a request is decoded (`charge`)."""

    # window start (time.monotonic: system-wide on Linux), requests, rows, explained rows
    _SLOT = struct.Struct("dqqq")

    def __init__(self, max_requests: int, window_s: float, keys: list[str],
                 path: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 max_rows: int | None = None, max_explained: int | None = None) -> None:  # fmt: skip
        self.max, self.window, self.clock = max_requests, window_s, clock
        self.max_rows, self.max_explained = max_rows, max_explained
        self.slot = {key: i * self._SLOT.size for i, key in enumerate(dict.fromkeys(keys))}
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None

    def _open(self) -> mmap.mmap:
        """On first use, in the worker (importing the service opens nothing)."""
        self.path = self.path or limiter_path()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        size = max(len(self.slot), 1) * self._SLOT.size
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:  # the first worker sizes it; a zeroed slot reads as an expired window
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)
        return self._map

    def hit(self, key: str) -> float | None:
        """One request: None when allowed, else the seconds until the window resets."""
        return self._take(key, 1, 0, 0)

    def charge(self, key: str, rows: int, explained: int) -> float | None:
        """A decoded request's work: None when it fits in the window, else the wait."""
        return self._take(key, 0, rows, explained)

    def _take(self, key: str, requests: int, rows: int, explained: int) -> float | None:
        at = self.slot[key]
        shared = self._map or self._open()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self.clock()
            start, n_req, n_rows, n_expl = self._SLOT.unpack_from(shared, at)
            if not n_req or not 0 <= now - start < self.window:  # (a file from before a reboot)
                start, n_req, n_rows, n_expl = now, 0, 0, 0
            over = (n_req + requests > self.max
                    or (self.max_rows is not None and rows and n_rows + rows > self.max_rows)
                    or (self.max_explained is not None and explained
                        and n_expl + explained > self.max_explained))  # fmt: skip
            if over:
                return start + self.window - now
            self._SLOT.pack_into(
                shared, at, start, n_req + requests, n_rows + rows, n_expl + explained
            )
            return None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class FailedKeyThrottle:
    """Per client address (per worker): after `max_failures` wrong or missing keys within
    `window_s`, further attempts get 429 without a key check until the window ends, so keys
    cannot be guessed at line rate. At most `max_clients` addresses are tracked."""

    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max, self.window, self.cap, self.clock = max_failures, window_s, max_clients, clock
        self._seen: dict[str, tuple[float, int]] = {}

    def blocked(self, client: str) -> float | None:
        start, n = self._seen.get(client, (0.0, 0))
        wait = start + self.window - self.clock()
        return wait if n >= self.max and wait > 0 else None

    def failed(self, client: str) -> None:
        now = self.clock()
        start, n = self._seen.get(client, (now, 0))
        if now - start >= self.window:
            start, n = now, 0
        if client not in self._seen and len(self._seen) >= self.cap:
            self._seen.pop(next(iter(self._seen)))  # the oldest tracked address
        self._seen[client] = (start, n + 1)


def limiter_path() -> Path:
    """One counter file per running server: its workers share their parent process."""
    return Path(tempfile.gettempdir()) / f"riskloop-ratelimit-{os.getppid()}.bin"
