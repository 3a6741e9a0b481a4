"""`riskloop dashboard` (`make dashboard`): the risk-operations app on DASHBOARD_HOST:PORT
(127.0.0.1:8501), talking to the scoring API at API_BASE_URL with API_KEY and reading the
prediction store read-only. Beyond loopback it refuses to start without DASHBOARD_PASSWORD.

Streamlit runs with telemetry off, no file watcher, no error details in the browser (a page
shows a message, the log the traceback), and nothing fetched from outside this machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dashboard.settings import load_env

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_args(host: str, port: int) -> list[str]:
    """`streamlit run` with riskloop's settings: one place, for `make dashboard`, the tests
    and the container."""
    options = {
        "server.address": host, "server.port": port, "server.headless": "true",
        "server.fileWatcherType": "none", "server.runOnSave": "false",
        "server.maxUploadSize": 200, "browser.gatherUsageStats": "false",
        "client.showErrorDetails": "none", "client.toolbarMode": "viewer",
        "client.showErrorLinks": "false", "global.developmentMode": "false",
        "theme.base": "light",
    }  # fmt: skip
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            *(f"--{k}={v}" for k, v in options.items())]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", help="listen address (DASHBOARD_HOST, default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (DASHBOARD_PORT, default 8501)")
    args = ap.parse_args()
    if args.host:
        os.environ["DASHBOARD_HOST"] = args.host
    if args.port:
        os.environ["DASHBOARD_PORT"] = str(args.port)
    env = load_env()
    env.check()
    root = str(APP.parent.parent)  # the app imports riskloop's packages from the repository
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault(
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
    )  # model cards: keep the log readable
    print(f"riskloop dashboard on http://{env.host}:{env.port} -> API {env.api_base_url}"
          + (" (login required)" if env.password else ""), flush=True)  # fmt: skip
    cmd = streamlit_args(env.host, env.port)
    os.execv(cmd[0], cmd)
