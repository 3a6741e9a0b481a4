"""`make deploy`: serve the current @champion. Imports it into the BentoML model store, checks
it on its golden batch, builds the bento (what `make serve`, a restart or a container serves)
and writes the deployment record a running service follows; then waits until every worker of
the running service (SERVE_URL, default http://127.0.0.1:$PORT) serves it, swapped in without
a restart or a failed request. `make promote` and `make rollback` end with it.

Exit codes: 0 served (or no service running: the next `make serve` serves it), 1 the service
refused the model or did not switch in time (its /readyz says why)."""

from __future__ import annotations

import argparse
import os
import re
import time

import httpx

from pipelines.bento import build
from riskloop.cli import run_main
from riskloop.errors import RiskloopError

_SERVED = re.compile(r"^riskloop_served_model\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.M)


def served_versions(metrics_text: str) -> dict[str, str]:
    """{worker pid: the version it serves} from the service's /metrics."""
    out = {}
    for m in _SERVED.finditer(metrics_text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if float(m["value"]) == 1:
            out[labels.get("pid", "")] = labels["version"]
    return out


def wait_until_served(url: str, version: str, timeout_s: float) -> bool:
    """True once every live worker serves `version`; False if no service answers at `url`."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5).json()
            seen = served_versions(httpx.get(f"{url}/metrics", timeout=5).text)
        except httpx.TransportError:
            return False
        status = ready.get("deployment", {})
        if (
            status.get("status") in ("restart_required", "failed")
            and status.get("wanted") == version
        ):
            raise RiskloopError(f"the service at {url} did not switch to v{version}: "
                                f"{status['status']}: {status.get('detail')}")  # fmt: skip
        if seen and set(seen.values()) == {version}:
            return True
        time.sleep(0.5)
    raise RiskloopError(f"the service at {url} still serves {sorted(set(seen.values()))} after "
                        f"{timeout_s:.0f} s (wanted v{version}); see its /readyz")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reason", default="make deploy")
    ap.add_argument("--url", default=os.environ.get("SERVE_URL")
                    or f"http://127.0.0.1:{os.environ.get('PORT', '3000')}")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the swap")
    args = ap.parse_args()
    record = build(args.reason)
    started = time.monotonic()
    if wait_until_served(args.url, record.version, args.timeout):
        print(f"{args.url} serves v{record.version} on every worker "
              f"({time.monotonic() - started:.1f} s after the record)")  # fmt: skip
    else:
        print(f"no service answers at {args.url}: `make serve` will serve v{record.version}")


if __name__ == "__main__":
    run_main(main)
