"""`make ui`: the MLflow UI for the tracking store riskloop uses (MLFLOW_TRACKING_URI, or the
embedded SQLite default). A tracking server already is the UI: its address is printed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from riskloop import stores
from riskloop.cli import run_main


def command(uri: str, artifacts: str | None, port: int) -> list[str] | None:
    """The `mlflow ui` command line for a store (None: a server, nothing to start). Pure."""
    if stores.is_tracking_server(uri):
        return None
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    return cmd + (["--default-artifact-root", artifacts] if artifacts else [])


def main() -> None:
    ap = argparse.ArgumentParser(prog="riskloop ui", description=__doc__)
    ap.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", "5000")))
    args = ap.parse_args()
    uri = stores.tracking_uri()
    cmd = command(uri, stores.artifact_root(), args.port)
    if cmd is None:
        print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is {uri}")
        return
    print(f"MLflow UI for {stores.redact(uri)} on http://127.0.0.1:{args.port}", flush=True)
    exe = str(Path(sys.executable).with_name("mlflow"))
    os.execv(exe, [exe, *cmd[1:]])


if __name__ == "__main__":
    run_main(main)
