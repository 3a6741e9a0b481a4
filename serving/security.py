"""API-key auth and per-key rate limiting as one pure ASGI middleware (no per-request
object churn on the hot path). Health and metrics endpoints are exempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable

Scope = dict
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
EXEMPT = ("/livez", "/readyz", "/metrics", "/healthz", "/docs", "/openapi.json", "/docs.json")


def key_id(key: str) -> str:
    """A short, non-reversible label for a key (for metrics and logs, never the key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


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


async def _reject(
    send: Callable, status: int, detail: str, extra: list[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthRateLimitMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str], limiter: FixedWindowLimiter,
                 on_reject: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.app, self.keys, self.limiter, self.on_reject = app, keys, limiter, on_reject

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(EXEMPT)
            or scope["method"] == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        if self.keys:
            key = match_key(presented_key(scope["headers"]), self.keys)
            if key is None:
                if self.on_reject:
                    self.on_reject(401)
                await _reject(send, 401, "missing or invalid API key (X-API-Key or Authorization: Bearer)",
                              [(b"www-authenticate", b"Bearer")])  # fmt: skip
                return
            wait = self.limiter.hit(key)
            if wait is not None:
                if self.on_reject:
                    self.on_reject(429)
                await _reject(send, 429, "rate limit exceeded",
                              [(b"retry-after", str(max(1, math.ceil(wait))).encode())])  # fmt: skip
                return
        await self.app(scope, receive, send)
