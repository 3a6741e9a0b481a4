"""The rate limit holds across worker processes: they share one counter file."""

from __future__ import annotations

import multiprocessing

from serving.security import FailedKeyThrottle, FixedWindowLimiter


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


def test_work_is_limited_as_well_as_requests(tmp_path):
    limiter = FixedWindowLimiter(100, 60.0, ["k"], tmp_path / "limits.bin", max_rows=1000,
                                 max_explained=50)  # fmt: skip
    assert limiter.hit("k") is None and limiter.charge("k", 40, 40) is None
    assert limiter.charge("k", 40, 40) is not None  # 80 explained rows > 50
    assert limiter.charge("k", 900, 0) is None  # rows without reasons still fit
    assert limiter.charge("k", 100, 0) is not None  # 1,040 rows > 1,000


def test_failed_key_checks_are_throttled_per_client():
    now = [0.0]
    throttle = FailedKeyThrottle(3, 60.0, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.blocked("1.2.3.4") is None
        throttle.failed("1.2.3.4")
    assert throttle.blocked("1.2.3.4") == 60.0 and throttle.blocked("5.6.7.8") is None
    now[0] = 61.0
    assert throttle.blocked("1.2.3.4") is None  # the window ended
    throttle.failed("a")
    throttle.failed("b")  # at most 2 addresses tracked: the oldest goes
    assert len(throttle._seen) == 2
