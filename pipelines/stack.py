"""`make stack`: the production stack on this machine, without containers — PostgreSQL
(the machine's server: one database each for MLflow, the prediction store and Optuna), an
MLflow tracking server on it with a proxied artifact store, the bento service on the
prediction store, and the monitoring scheduler. The same pieces as deploy/compose.yaml.

    riskloop stack                       start, supervise, stop everything on Ctrl-C/SIGTERM
    set -a; . state/stack/stack.env      then any riskloop command (dvc repro, promote,
                                         deploy, traffic, monitor) works against the stack

The service starts once a bento exists (`riskloop bento` or `riskloop deploy` against the
stack), and follows later deployments itself. A piece that exits unexpectedly is restarted
(with a growing pause), never silently left down."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import sqlalchemy as sa

from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import RiskloopError

log = logging.getLogger("stack")
DATABASES = ("mlflow", "predictions", "optuna")
RESTART_PAUSE_S = (1.0, 30.0)  # first pause before a restart, the longest


@dataclass(frozen=True)
class StackUrls:
    mlflow_backend: str
    predictions: str
    optuna: str
    tracking: str  # the MLflow server every client talks to

    def client_env(self, artifacts: Path) -> dict[str, str]:
        """What a riskloop command needs to work against the stack (and `make backup` to
        reach the tracking server's own stores)."""
        return {"MLFLOW_TRACKING_URI": self.tracking, "DATABASE_URL": self.predictions,
                "OPTUNA_STORAGE": self.optuna, "MLFLOW_BACKEND_STORE_URI": self.mlflow_backend,
                "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts)}  # fmt: skip


def urls(server: str, prefix: str, mlflow_port: int) -> StackUrls:
    """One database per store on `server` (a PostgreSQL URL without a database)."""
    base = stores.normalize_db_url(server.rstrip("/"), "--postgres")
    name = {db: f"{prefix}_{db}" for db in DATABASES}
    return StackUrls(f"{base}/{name['mlflow']}", f"{base}/{name['predictions']}",
                     f"{base}/{name['optuna']}", f"http://127.0.0.1:{mlflow_port}")  # fmt: skip


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def ensure_databases(server: str, stack: StackUrls) -> list[str]:
    """Create the stack's databases that do not exist; returns the ones created."""
    admin = sa.create_engine(stores.normalize_db_url(server.rstrip("/") + "/postgres", "--postgres"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    created = []
    try:
        with admin.connect() as conn:
            for url in (stack.mlflow_backend, stack.predictions, stack.optuna):
                name = url.rsplit("/", 1)[1]
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                      {"n": name}).first()  # fmt: skip
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                    created.append(name)
    except sa.exc.OperationalError as exc:
        raise RiskloopError(f"PostgreSQL at {stores.redact(server)} unreachable: "
                            f"{str(exc).splitlines()[0]}") from exc  # fmt: skip
    finally:
        admin.dispose()
    return created


@dataclass
class Piece:
    """One supervised process: started when `ready_to_start()` says so, restarted when it
    exits while the stack runs."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    ready_to_start: Callable[[], bool] = lambda: True
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    _log: IO[str] | None = field(default=None, repr=False)

    def step(self, now: float) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:  # it exited on its own: report, pause, restart
            pause = min(RESTART_PAUSE_S[0] * 2**self.restarts, RESTART_PAUSE_S[1])
            log.error("%s exited with %s; restarting in %.0f s (log: %s)", self.name,
                      self.proc.returncode, pause, self.log_path)  # fmt: skip
            self.proc, self.restarts, self.next_start = None, self.restarts + 1, now + pause
        if now < self.next_start or not self.ready_to_start():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()  # the handle of the run that exited
        self._log = self.log_path.open("a")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.info("%s started (pid %d, log %s)", self.name, self.proc.pid, self.log_path)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        stop_group(self.proc, grace_s)
        self._close_log()
        log.info("%s stopped", self.name)


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to a process group (a server and its workers), SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_http(url: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RiskloopError(f"the process behind {url} exited; see its log")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RiskloopError(f"{url} not answering after {timeout_s:.0f} s")


def bento_exists(env: dict[str, str]) -> bool:
    """A `riskloop:latest` bento in the BentoML store (a file read: `bentoml get` costs a
    second of CPU, and this is polled)."""
    home = Path(env.get("BENTOML_HOME") or "~/bentoml").expanduser()
    return (home / "bentos" / "riskloop" / "latest").is_file()


def main() -> None:
    ap = argparse.ArgumentParser(prog="riskloop stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--postgres", default=os.environ.get("STACK_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432"),
                    help="the PostgreSQL server (a URL without a database; env STACK_POSTGRES)")  # fmt: skip
    ap.add_argument(
        "--prefix", default="riskloop", help="database names: PREFIX_mlflow, _predictions, _optuna"
    )
    ap.add_argument("--mlflow-port", type=int, default=5000)
    ap.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "3000")), help="the API's port"
    )
    ap.add_argument(
        "--no-scheduler",
        action="store_true",
        help="leave monitoring to a manual `riskloop monitor`",
    )
    args = ap.parse_args()  # fmt: skip

    state = stores.state_dir()
    home = state / "stack"
    stack = urls(args.postgres, args.prefix, args.mlflow_port)
    for name in ensure_databases(args.postgres, stack):
        log.info("created database %s", name)
    client = stack.client_env(home / "mlartifacts")
    env_path = home / "stack.env"
    home.mkdir(parents=True, exist_ok=True)
    env_path.write_text(env_file_text(client))
    env = {**os.environ, **client, "RISKLOOP_STATE_DIR": str(state), "BENTOML_DO_NOT_TRACK": "true"}
    bin_dir = Path(sys.executable).parent
    mlflow = Piece("mlflow", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", stack.mlflow_backend,
                              "--artifacts-destination", client["MLFLOW_ARTIFACTS_DESTINATION"], "--serve-artifacts",
                              "--host", "127.0.0.1", "--port", str(args.mlflow_port)],
                   env, home / "mlflow.log")  # fmt: skip
    api = Piece("api", [str(bin_dir / "bentoml"), "serve", "riskloop:latest", "--host", "127.0.0.1",
                        "--port", str(args.port)], env, home / "api.log",
                ready_to_start=lambda: bento_exists(env))  # fmt: skip
    pieces = [mlflow, api]
    if not args.no_scheduler:
        pieces.append(
            Piece("scheduler", [str(bin_dir / "riskloop"), "schedule"], env, home / "scheduler.log")
        )

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        mlflow.step(time.monotonic())
        wait_http(f"{stack.tracking}/health", 120, lambda: mlflow.proc.poll() is None)
        print(f"stack up: MLflow {stack.tracking}, API http://127.0.0.1:{args.port} (once a bento "
              f"exists), stores on {stores.redact(args.postgres)}\n"
              f"clients: set -a; . {env_path}; set +a", flush=True)  # fmt: skip
        waiting = True
        while not stopping:
            now = time.monotonic()
            for piece in pieces:
                piece.step(now)
            if waiting and api.proc is None and not stopping:
                log.info("the API waits for a bento: `riskloop bento` with %s loaded", env_path)
                waiting = False
            time.sleep(1.0)
    finally:
        for piece in reversed(pieces):
            piece.stop()


if __name__ == "__main__":
    run_main(main)
