"""The chaos run (bench/chaos.py) at a small scale: real `bentoml serve` with 2 workers, real
faults, every acknowledged prediction looked up in the store afterwards. `make chaos` runs the
same at 20,000 requests a scenario and writes bench/RESULTS.md."""

from __future__ import annotations

import pytest

from bench.chaos import CLIENT_TIMEOUT_S, run_store
from tests.conftest import pg_databases
from tests.serving.server import free_port

pytestmark = pytest.mark.slow
REQUESTS = 1500


def env(champion) -> dict[str, str]:
    return {"BENTOML_HOME": str(champion["bento_home"]), "RISKLOOP_STATE_DIR": str(champion["state"]),
            "BENTOML_DO_NOT_TRACK": "true", "SHUTDOWN_DRAIN_S": "2"}  # fmt: skip


def check(outcomes) -> None:
    for o in outcomes:
        assert not o.note, o
        assert o.lost == 0 and o.duplicated == 0, o  # every acknowledged row, once
        assert not o.other_status, o  # a failure is a clean 503 or 429, never a 5xx
        assert o.answered > 0 and o.slowest_s < CLIENT_TIMEOUT_S, o


def test_sqlite_faults_lose_no_acknowledged_prediction(champion, tmp_path):
    outcomes = run_store("sqlite", f"sqlite:///{tmp_path / 'predictions.db'}",
                         ["kill_worker", "kill_server", "disk_full", "sigterm"], REQUESTS, tmp_path,
                         free_port(), extra_env=env(champion))  # fmt: skip
    check(outcomes)
    by = {o.scenario: o for o in outcomes}
    if not by["disk_full"].note:
        assert by["disk_full"].refused.get(503, 0) > 0  # refused while the journal could not write
    assert by["sigterm"].cut_in_flight == 0  # a graceful stop answers what it accepted


def test_postgres_faults_lose_no_acknowledged_prediction(champion, tmp_path):
    with pg_databases() as create:
        outcomes = run_store("postgresql", create(),
                             ["store_refused", "store_stalled", "stall_kill_worker", "kill_worker"],
                             REQUESTS, tmp_path, free_port(), extra_env=env(champion))  # fmt: skip
    check(outcomes)
