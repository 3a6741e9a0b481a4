"""Which model a running service should serve: the deployment record that `make deploy` writes
(`<state>/deploy/current.json`, or DEPLOYMENT_FILE) after it imported @champion into the
BentoML model store, and the watcher each worker runs on it.

A worker that sees a new record loads that model beside the one it serves (golden checks
included), then swaps it in with one assignment: requests in flight finish on the old model,
the next batch is scored by the new one, no connection is dropped. A model whose data
contract differs from the served one cannot be swapped in (the request schemas were built
from the old contract at start): the worker keeps serving and reports `restart_required`.
A container has no record and serves the model its bento pins."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentRecord:
    model_tag: str  # BentoML model store tag of the imported champion
    version: str  # its registry version
    bento: str  # the bento built for it (what a restart or a container serves)
    deployed_at: str
    deployed_by: str
    reason: str


def write(path: Path, record: DeploymentRecord) -> None:
    """Atomically: a watcher reads either the old record or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)


def read(path: Path) -> DeploymentRecord | None:
    try:
        return DeploymentRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.error("deployment record %s is unreadable (%s): ignored", path, exc)
        return None


class Watcher:
    """Polls the record (a stat a second); calls `deploy(record)` in its own thread when it
    names another model than `current()`. Failures are reported through `deploy` itself."""

    def __init__(self, path: Path, current: Callable[[], str],
                 deploy: Callable[[DeploymentRecord], Any], interval_s: float = 1.0) -> None:  # fmt: skip
        self.path, self.current, self.deploy, self.interval_s = path, current, deploy, interval_s
        self._seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployment-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return
        self._seen = stamp
        record = read(self.path)
        if record is not None and record.model_tag != self.current():
            self.deploy(record)

    def stop(self) -> None:
        self._stop.set()
