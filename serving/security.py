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
    a key's first request."""

    _SLOT = struct.Struct("dq")  # window start (time.monotonic: system-wide on Linux), count

    def __init__(self, max_requests: int, window_s: float, keys: list[str],
                 path: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max, self.window, self.clock = max_requests, window_s, clock
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
        """None when allowed, else the seconds until the window resets."""
        at = self.slot[key]
        shared = self._map or self._open()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self.clock()
            start, count = self._SLOT.unpack_from(shared, at)
            if count == 0 or not 0 <= now - start < self.window:  # (a file from before a reboot)
                start, count = now, 0
            if count >= self.max:
                return start + self.window - now
            self._SLOT.pack_into(shared, at, start, count + 1)
            return None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def limiter_path() -> Path:
    """One counter file per running server: its workers share their parent process."""
    return Path(tempfile.gettempdir()) / f"riskloop-ratelimit-{os.getppid()}.bin"
