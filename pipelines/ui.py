"""`make ui`: the MLflow UI for the tracking store riskloop uses (MLFLOW_TRACKING_URI, or the
embedded SQLite default), with riskloop's registry webhook: moving @champion in the UI is gated,
audited and deployed like `make promote`, or undone (pipelines/ui_review.py). A tracking server
already is the UI: its address is printed.

The webhook (`riskloop-champion-gate`, event model_version_alias.created) is registered in the
store at each start with a fresh HMAC secret only this process knows, pointing at the receiver
it runs on 127.0.0.1 (UI_WEBHOOK_PORT, default any free port); the server is allowed to deliver
to loopback over HTTP (MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS, MLFLOW_WEBHOOK_ALLOWED_SCHEMES), with
the secret encrypted by a key kept in <state>/mlflow-webhook.key. While `make ui` is not running, a move made in
another UI is not reviewed: run the UI through it."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
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


WEBHOOK_NAME = "riskloop-champion-gate"


def encryption_key(state: Path) -> str:
    """The Fernet key MLflow encrypts webhook secrets with (MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY;
    unset, each process draws its own and the server cannot read what `make ui` stored)."""
    from cryptography.fernet import Fernet

    path = state / "mlflow-webhook.key"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(Fernet.generate_key().decode())
    return os.environ.get("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY") or path.read_text().strip()


def register_webhook(uri: str, url: str, secret: str) -> str:
    """Create or update riskloop's webhook in the store at `uri`; returns its id."""
    from mlflow import MlflowClient

    from pipelines.ui_review import EVENT

    client = MlflowClient(uri, registry_uri=uri)
    fields = {"url": url, "events": [EVENT], "secret": secret, "status": "ACTIVE",
              "description": "riskloop: gate, audit and deploy @champion moves made in the UI"}  # fmt: skip
    for hook in client.list_webhooks():
        if hook.name == WEBHOOK_NAME:
            return client.update_webhook(hook.webhook_id, **fields).webhook_id
    return client.create_webhook(WEBHOOK_NAME, **fields).webhook_id


def main() -> None:
    ap = argparse.ArgumentParser(prog="riskloop ui", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", "5000")))
    ap.add_argument("--webhook-port", type=int, default=int(os.environ.get("UI_WEBHOOK_PORT", "0")))
    ap.add_argument(
        "--no-webhook", action="store_true", help="the plain UI: moves are not reviewed"
    )
    args = ap.parse_args()
    uri = stores.tracking_uri()
    cmd = command(uri, stores.artifact_root(), args.port)
    if cmd is None:
        print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is {uri}")
        return
    env = dict(os.environ)
    receiver = None
    if not args.no_webhook:
        from pipelines.ui_review import Receiver
        from riskloop.settings import load_params

        # the receiver is plain HTTP on loopback (signed deliveries): MLflow allows only https
        # to public addresses unless told; the secret is stored encrypted with a key the
        # server must share, kept owner-only in the state directory
        loopback = {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "https,http",
                    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": encryption_key(stores.state_dir())}  # fmt: skip
        os.environ.update(loopback)
        env.update(loopback)
        secret = secrets.token_urlsafe(32)
        receiver = Receiver(secret, load_params().registry.champion_alias, port=args.webhook_port)
        receiver.start()
        register_webhook(uri, f"http://127.0.0.1:{receiver.port}/", secret)
        print(
            f"@champion moves in the UI are reviewed by riskloop (webhook on port {receiver.port})"
        )
    print(f"MLflow UI for {stores.redact(uri)} on http://127.0.0.1:{args.port}", flush=True)
    exe = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([exe, *cmd[1:]], env=env)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    finally:
        if receiver is not None:
            receiver.stop()
    sys.exit(code if code > 0 else 0)


if __name__ == "__main__":
    run_main(main)
