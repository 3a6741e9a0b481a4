"""`make demo`: the whole loop on embedded defaults, after `make run` trained, promoted and
built the bento: serve it -> stable traffic + outcomes -> monitor (no retrain) -> recession
traffic + outcomes -> monitor (retrain) -> a new challenger registered. Each monitoring window
starts when its traffic does, so earlier traffic in the store does not blur it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx

from riskloop.cli import run_main
from riskloop.errors import RiskloopError

API_KEY = "demo-key"


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _python(*args: str) -> None:
    code = subprocess.run([sys.executable, "-m", *args]).returncode
    if code:  # a monitor that cannot decide (exit 2) is a failed demo too
        raise RiskloopError(f"`python -m {' '.join(args)}` failed (exit {code})")


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RiskloopError(
                f"bentoml serve exited with {proc.returncode}; see its output above"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RiskloopError(f"{url}/readyz not ready after {timeout_s:.0f} s")


def _traffic(url: str, scenario: str, rows: int, seed: int) -> str:
    since = datetime.now(UTC).isoformat()
    _python("pipelines.traffic", "--scenario", scenario, "--rows", str(rows), "--seed", str(seed),
            "--url", url, "--rate", "0", "--outcomes-delay", "1")  # fmt: skip
    return since


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    os.environ["API_KEY"] = API_KEY  # the traffic steps authenticate with it
    # Interventions on (traffic sends customer ids) so the dashboard's interventions panel has data.
    env = {**os.environ, "API_KEYS": API_KEY, "ENABLE_INTERVENTIONS": "true"}
    _step(f"serve the champion's bento at {url}")
    serve = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "bentoml"), "serve", "riskloop:latest",
         "--host", "127.0.0.1", "--port", str(args.port)],
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(url, serve)
        _step("stable traffic: held-out rows as they are, then their outcomes")
        since = _traffic(url, "stable", args.rows, seed=11)
        _step("monitor the stable window: expect no retrain")
        _python("pipelines.monitor", "--since", since, "--no-act")
        _step("recession traffic: limits cut, bills and delays up, then outcomes")
        since = _traffic(url, "recession", args.rows, seed=12)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)  # the service flushes its log on shutdown
        serve.wait(timeout=60)
    _step("monitor the recession window: expect retrain, which registers a challenger")
    _python("pipelines.monitor", "--since", since, "--act")
    _step("where to look")
    print("  reports/monitoring/*.json    decisions (retrain: true|false, reasons, checks)")
    print("  reports/monitoring/*.html    Evidently reports (drift, PSI, realized performance)")
    print("  make monitor-ui              Evidently dashboard over time (state/evidently)")
    print(
        "  make ui                      MLflow: the new challenger, evaluated on test + recent window"
    )
    print("  make promote                 gated promotion of the challenger")


if __name__ == "__main__":
    run_main(main)
