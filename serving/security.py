"""API-key checks and per-key rate limiting, used by the gateway middleware
(serving/fastpath.py). Health, metrics and docs endpoints are exempt."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

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
    """Per-key counter over fixed windows; per worker process (documented in the README)."""

    def __init__(
        self, max_requests: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.max, self.window, self.clock = max_requests, window_s, clock
        self.state: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> float | None:
        """None when allowed, else the seconds until the window resets."""
        now = self.clock()
        start, count = self.state.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.max:
            return start + self.window - now
        self.state[key] = (start, count + 1)
        return None
