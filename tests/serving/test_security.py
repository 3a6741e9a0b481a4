"""The rate limit holds across worker processes: they share one counter file."""

from __future__ import annotations

import multiprocessing

from serving.security import FixedWindowLimiter


def _hits(path, key: str, n: int) -> int:
    limiter = FixedWindowLimiter(50, 60.0, ["a", "b"], path)
    return sum(limiter.hit(key) is None for _ in range(n))


def test_limit_is_shared_by_processes(tmp_path):
    path = tmp_path / "limits.bin"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        allowed = pool.starmap(_hits, [(path, "a", 40), (path, "a", 40)])
    assert sum(allowed) == 50  # not 80: one budget for the server, whatever the workers
    assert _hits(path, "b", 60) == 50  # each key has its own


def test_window_resets_and_says_when(tmp_path):
    now = [100.0]
    limiter = FixedWindowLimiter(2, 10.0, ["k"], tmp_path / "limits.bin", clock=lambda: now[0])
    assert limiter.hit("k") is None and limiter.hit("k") is None
    now[0] = 104.0
    assert limiter.hit("k") == 6.0  # seconds until the window that began at 100 ends
    now[0] = 110.0
    assert limiter.hit("k") is None
