"""The chaos run: single-row traffic against a real `bentoml serve` (2 workers) while a fault
is injected, then every acknowledged prediction looked up in the store.

Scenarios, each on SQLite and on PostgreSQL behind a TCP proxy we control (never the
machine's server itself): kill -9 of one worker; kill -9 of the whole server, then a restart;
the store refusing connections; the store stalled (connections open, no byte passes); a stall
with a kill -9 of a worker in it; the journal's disk full (a small tmpfs filled by another
file); SIGTERM, then a restart. A scenario that needs a network store is n/a on SQLite.

Counted per scenario: requests sent; answered (200, each with its prediction_id); refused
with a clean status (503 + Retry-After, 429); connection errors while the server was down
(refused connections: nothing acknowledged); requests cut in flight (sent, then the
connection dropped: never acknowledged either); the slowest answer; and, once the store is
back, acknowledged rows missing from the store (lost) and request ids stored more than once
(duplicated). The bar: 0 lost, 0 duplicated, every refusal clean, no answer slower than the
client's timeout.

    make chaos                       # the bento `make bento` built, 20,000 requests a run
    python -m bench.chaos --requests 2000 --stores sqlite --scenarios kill_worker,sigterm
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa

from bench.results import write_section
from serving.config import NO_RATE_LIMIT
from tests.proxy import TcpProxy

KEY = "chaos-key"
SCENARIOS = ("kill_worker", "kill_server", "store_refused", "store_stalled", "stall_kill_worker",
             "disk_full", "sigterm")  # fmt: skip
NEEDS_NETWORK_STORE = {"store_refused", "store_stalled", "stall_kill_worker"}
CLIENT_TIMEOUT_S = 15.0


@dataclass
class Outcome:
    store: str
    scenario: str
    sent: int = 0
    answered: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # clean statuses: 503, 429
    other_status: dict[int, int] = field(default_factory=dict)  # anything else: a failure
    connection_errors: int = 0  # server down: refused connections
    cut_in_flight: int = 0  # request sent, connection dropped before an answer
    timed_out: int = 0  # no answer within the client's timeout (e.g. queued while workers start)
    slowest_s: float = 0.0
    lost: int = -1  # acknowledged rows not in the store once it is back
    duplicated: int = -1  # request ids stored more than once
    note: str = ""

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.other_status


class Service:
    """A `bentoml serve` of the current bento (BENTOML_HOME from the environment)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "riskloop:latest", "--port", str(self.port),
             "--host", "127.0.0.1"], env=self.env, stdout=self.log.open("a"),
            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).json().get("status") == "ready":
                    return
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout_s:.0f} s: {self.log.read_text()[-3000:]}")

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "_bentoml_impl.worker" in " ".join(p.cmdline())]  # fmt: skip

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGTERM: the server's own graceful stop. SIGKILL: every process of the server at
        once (its workers run in process groups of their own)."""
        tree = [
            psutil.Process(self.proc.pid),
            *psutil.Process(self.proc.pid).children(recursive=True),
        ]
        for p in tree if sig == signal.SIGKILL else tree[:1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            self.proc.wait(10)
        psutil.wait_procs(tree, timeout=30)

    def example(self) -> dict:
        """A valid record: the example in the service's own OpenAPI document."""
        doc = httpx.get(self.url + "/openapi.json", timeout=10).json()
        return doc["components"]["schemas"]["PredictRequest"]["examples"][0]["records"][0]


class Traffic:
    """`clients` threads sending single-row requests until `finish()`."""

    def __init__(self, url: str, record: dict, tag: str, clients: int = 8) -> None:
        self.url, self.record, self.tag = url, record, tag
        self.sent = 0
        self._done = False
        self.acked: dict[str, str] = {}  # request_id -> prediction_id
        self.statuses: Counter[int] = Counter()
        self.connection_errors = self.cut = self.timed_out = 0
        self.slowest = 0.0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done = True
        for t in self._threads:
            t.join()

    def wait_sent(self, n: int) -> None:
        while self.sent < n and any(t.is_alive() for t in self._threads):
            time.sleep(0.02)

    def _next(self) -> int | None:
        with self._lock:
            if self._done:
                return None
            self.sent += 1
            return self.sent

    def _client(self) -> None:
        headers = {"X-API-Key": KEY}
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=headers) as client:
            while (i := self._next()) is not None:
                rid = f"{self.tag}-{i}"
                started = time.monotonic()
                try:
                    r = client.post(self.url + "/predict",
                                    json={"records": [self.record], "request_id": rid})  # fmt: skip
                except httpx.ConnectError:
                    with self._lock:
                        self.connection_errors += 1
                    time.sleep(0.05)  # the server is down: do not spin
                    continue
                except httpx.TimeoutException:  # waited past the client's timeout
                    with self._lock:
                        self.timed_out += 1
                    continue
                except httpx.TransportError:  # sent, then the connection dropped: not acknowledged
                    with self._lock:
                        self.cut += 1
                    continue
                took = time.monotonic() - started
                with self._lock:
                    self.statuses[r.status_code] += 1
                    self.slowest = max(self.slowest, took)
                    if r.status_code == 200:
                        self.acked[rid] = r.json()["predictions"][0]["prediction_id"]
                if r.status_code in (429, 503):
                    time.sleep(min(float(r.headers.get("retry-after", "1")), 1.0))


def stored(db_url: str, tag: str) -> tuple[set[str], int]:
    """(prediction ids, request ids stored more than once) of this run's rows."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            ids = set(conn.execute(sa.text("SELECT prediction_id FROM predictions WHERE request_id "
                                           "LIKE :t"), {"t": f"{tag}-%"}).scalars())  # fmt: skip
            dup = conn.execute(sa.text(
                "SELECT count(*) FROM (SELECT request_id FROM predictions WHERE request_id LIKE :t "
                "GROUP BY request_id HAVING count(*) > 1) d"), {"t": f"{tag}-%"}).scalar_one()  # fmt: skip
    finally:
        engine.dispose()
    return ids, dup


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[bool]:
    """A tmpfs of size_mb at path (root only): True if mounted."""
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                        capture_output=True).returncode == 0  # fmt: skip
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Another process fills the disk: a ballast file up to ENOSPC."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
    return ballast


def run_scenario(store: str, scenario: str, *, direct_url: str, service: Service,
                 proxy: TcpProxy | None, disk: Path | None, requests: int) -> Outcome:  # fmt: skip
    out = Outcome(store, scenario)
    if scenario in NEEDS_NETWORK_STORE and proxy is None:
        out.note = "n/a: SQLite is a local file"
        return out
    if scenario == "disk_full" and disk is None:
        out.note = "n/a: cannot mount a tmpfs here (not root)"
        return out
    tag = f"chaos-{store}-{scenario}-{time.time_ns()}"
    record = service.example()
    # the fault starts after a third of the requests and lasts at least its hold time; traffic
    # goes on until all were sent and a third more came after the fault ended
    with Traffic(service.url, record, tag) as traffic:
        traffic.wait_sent(requests // 3)
        if scenario == "kill_worker":
            service.workers()[0].kill()
        elif scenario == "kill_server":
            service.kill(signal.SIGKILL)
            service.start()
        elif scenario == "store_refused":
            proxy.cut()
            time.sleep(5)
            proxy.restore()
        elif scenario == "store_stalled":
            proxy.freeze()
            time.sleep(8)
            proxy.thaw()
        elif scenario == "stall_kill_worker":
            proxy.freeze()
            time.sleep(5)
            service.workers()[0].kill()
            time.sleep(5)
            proxy.thaw()
        elif scenario == "disk_full":
            ballast = fill(disk)
            time.sleep(5)
            ballast.unlink()
        elif scenario == "sigterm":
            service.kill(signal.SIGTERM)
            service.start()
        traffic.wait_sent(max(requests, traffic.sent + requests // 3))
    if service.proc.poll() is not None:
        service.start()
    service.wait_ready(120)  # the store is back and every journal replayed
    deadline = time.monotonic() + 120
    while True:
        ids, dup = stored(direct_url, tag)
        missing = set(traffic.acked.values()) - ids
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out.sent, out.answered = traffic.sent, traffic.statuses.get(200, 0)
    out.refused = {k: v for k, v in traffic.statuses.items() if k in (429, 503)}
    out.other_status = {k: v for k, v in traffic.statuses.items() if k not in (200, 429, 503)}
    out.connection_errors, out.cut_in_flight = traffic.connection_errors, traffic.cut
    out.timed_out = traffic.timed_out
    out.slowest_s = round(traffic.slowest, 3)
    out.lost, out.duplicated = len(missing), dup
    return out


def run_store(store: str, direct_url: str, scenarios: list[str], requests: int, workdir: Path,
              port: int, workers: int = 2, extra_env: dict[str, str] | None = None) -> list[Outcome]:  # fmt: skip
    """Every scenario against one store, one server (restarted where a scenario kills it)."""
    proxy = None
    serve_url = direct_url
    if store == "postgresql":
        target = sa.make_url(direct_url)
        proxy = TcpProxy((target.host, target.port or 5432))
        proxy.restore()
        serve_url = target.set(port=proxy.port).render_as_string(hide_password=False)
    disk_dir = workdir / f"journal-{store}"
    with small_disk(disk_dir, 64) as mounted:  # room for a whole scenario while the store is down
        env = {**os.environ, "API_KEYS": KEY, **NO_RATE_LIMIT,
               "SERVING_WORKERS": str(workers), "DATABASE_URL": serve_url,
               "SPOOL_DIR": str(disk_dir / "spool"), "PYTHONWARNINGS": "ignore", **(extra_env or {})}  # fmt: skip
        service = Service(env, port, workdir / f"serve-{store}.log")
        service.start()
        try:
            outcomes = []
            for scenario in scenarios:
                print(f"chaos: {store} {scenario} ...", flush=True)
                outcome = run_scenario(store, scenario, direct_url=direct_url, service=service,
                                       proxy=proxy, disk=disk_dir if mounted else None,
                                       requests=requests)  # fmt: skip
                print(f"chaos: {store} {scenario}: {asdict(outcome)}", flush=True)
                outcomes.append(outcome)
            return outcomes
        finally:
            service.kill(signal.SIGTERM)
            if proxy is not None:
                proxy.cut()


def table(outcomes: list[Outcome]) -> str:
    lines = ["| store | fault | sent | answered | 503 / 429 | other status | server down (refused) "
             "| cut in flight | timed out | slowest answer | **lost** | **duplicated** |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in outcomes:
        if o.note:
            lines.append(f"| {o.store} | {o.scenario} | {o.note} ||||||||||")
            continue
        refused = f"{o.refused.get(503, 0):,} / {o.refused.get(429, 0):,}"
        lines.append(f"| {o.store} | {o.scenario} | {o.sent:,} | {o.answered:,} | {refused} | "
                     f"{o.other_status or 0} | {o.connection_errors:,} | {o.cut_in_flight:,} | {o.timed_out:,} | "
                     f"{o.slowest_s:.2f} s | **{o.lost}** | **{o.duplicated}** |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=20_000, help="single-row requests per scenario")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--pg", default=os.environ.get("CHAOS_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"),
                    help="a PostgreSQL database the run may write to")  # fmt: skip
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for store in args.stores.split(","):
            url = f"sqlite:///{work / 'predictions.db'}" if store == "sqlite" else args.pg
            outcomes += run_store(store, url, scenarios, args.requests, work, 3911)
    minutes = (time.monotonic() - started) / 60
    body = (f"## Chaos: acknowledged predictions under faults\n\n`make chaos` "
            f"(`python -m bench.chaos --requests {args.requests}`), {minutes:.0f} min, 2 workers, 8 "
            f"clients, single-row requests, client timeout {CLIENT_TIMEOUT_S:.0f} s.\n\n"
            + table(outcomes) + "\n\nLost = answered with a prediction_id that is not in the store "
            "once it is back; duplicated = a request id stored twice. Refused connections happen "
            "only while the whole server is down; requests cut in flight were never answered.")  # fmt: skip
    write_section("chaos", body)
    print(table(outcomes))
    if not all(o.clean for o in outcomes if not o.note):
        sys.exit(
            "chaos: an acknowledged prediction was lost or duplicated, or a status was not clean"
        )


if __name__ == "__main__":
    main()
