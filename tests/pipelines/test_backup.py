"""Backups with a tested restore (pipelines/backup.py, riskloop/archive.py).

Fast: the retention policy and the restore plan (pure); a prediction store on SQLite and on
PostgreSQL backed up and restored in-process, refusals (a non-empty target, a file whose
sha256 does not match) before anything is written.

Slow: a trained, promoted, served repository copy is backed up while traffic and outcomes
flow, destroyed (state directory moved away, PostgreSQL database dropped, DVC cache gone),
and restored into fresh stores through the environment alone. The contract checked: every
row committed before the backup began is restored; nothing is restored that the source never
held; no duplicates; restored rows equal the source's column for column; the manifest's
counts are what came back; registry versions, aliases and tags, every artifact's bytes and
the DVC data come back; the restored @champion, loaded through MLflow, scores the golden
batch exactly as the original did."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines import backup
from pipelines.backup import BackupError, BackupInfo, Locations, Step
from pipelines.traffic import requests_of
from serving.store import insert_predictions, outcomes, prediction_row, predictions, upgrade
from tests.conftest import make_repo_copy, pg_databases, stratified_sample
from tests.serving.server import KEYS, Server

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


# --- retention and plans (pure) -----------------------------------------------------------


def _b(name: str, days_ago: float, ok: bool = True) -> BackupInfo:
    return BackupInfo(name, T0 - timedelta(days=days_ago), ok)


HISTORY = [_b("a", 30), _b("b", 20), _b("c", 10), _b("d", 5, ok=False), _b("e", 2), _b("f", 1)]


@pytest.mark.parametrize(
    ("keep", "max_age", "pruned"),
    [
        (None, None, []),  # no policy: nothing goes
        (2, None, ["a", "b", "c", "d"]),  # the failed one goes: a newer backup succeeded
        (10, None, ["d"]),
        (None, 7, ["a", "b", "c", "d"]),
        (None, 15, ["a", "b", "d"]),
        (1, 15, ["a", "b", "d"]),  # either policy keeps a backup
        (4, 3, ["a", "d"]),  # failures never count towards keep
    ],
)
def test_retention_keeps_newest_and_young_backups(keep, max_age, pruned):
    assert backup.to_prune(HISTORY, keep, max_age, T0) == pruned


def test_retention_never_deletes_the_newest_successful_backup():
    old = [_b("a", 90), _b("b", 60), _b("c", 1, ok=False)]
    # everything is older than the age limit: the newest success stays; a later failure too
    # (it may be a backup still running)
    assert backup.to_prune(old, None, 7, T0) == ["a"]
    assert backup.to_prune([_b("x", 3, ok=False)], 1, 1, T0) == []
    with pytest.raises(BackupError, match="--keep"):
        backup.to_prune(old, 0, None, T0)


def test_restore_chooses_the_newest_successful_backup():
    assert backup.choose(HISTORY, None).name == "f"
    assert backup.choose(HISTORY, "b").name == "b"
    with pytest.raises(BackupError, match="did not finish"):
        backup.choose(HISTORY, "d")
    with pytest.raises(BackupError, match="no successful backup"):
        backup.choose([_b("d", 1, ok=False)], None)


def test_prune_deletes_only_directories_named_like_backups(tmp_path):
    for name, status in [("20260101T000000Z", "ok"), ("20260102T000000Z", "ok"),
                         ("20260103T000000Z", "failed"), ("20260104T000000Z", "ok")]:  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"status": status}))
    (tmp_path / "notes").mkdir()  # not ours: never touched
    assert backup.prune(tmp_path, 1, None) == ["20260101T000000Z", "20260102T000000Z",
                                               "20260103T000000Z"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260104T000000Z", "notes"]


def _loc(**kw) -> Locations:
    base = {"predictions": "sqlite:////s/predictions.db", "mlflow": "sqlite:////s/mlflow.db",
            "mlartifacts": Path("/s/mlartifacts"), "optuna": "sqlite:////s/optuna.db",
            "dvc_remote": None, "dvc_cache": Path("/r/.dvc/cache")}  # fmt: skip
    return Locations(**{**base, **kw})


def test_plan_copies_a_shared_database_once_and_skips_what_is_not_there():
    pg = "postgresql+psycopg2://u:secret@db:5432/riskloop"
    steps = backup.plan_backup(
        _loc(predictions=pg, mlflow=pg), exists=lambda p: "optuna" not in str(p)
    )
    by = {s.part: s for s in steps}
    assert by["predictions"].kind == "postgresql" and by["predictions"].file == "predictions.pgdump"
    assert set(backup.KEY_TABLES["mlflow"]) <= set(
        by["predictions"].tables
    )  # one snapshot, both counted
    assert by["mlflow"] == Step("mlflow", "shared", pg, shared_with="predictions")
    assert by["optuna"].kind == "skipped" and by["mlartifacts"].kind == "tar"
    assert by["dvc"].note == "cache"
    remote = backup.plan_backup(
        _loc(dvc_remote=Path("/remote")), only=("dvc",), exists=lambda p: True
    )
    assert remote == [Step("dvc", "tar", "/remote", file="dvc.tar", note="remote")]  # preferred
    server = backup.plan_backup(_loc(mlflow=None, mlartifacts=None), exists=lambda p: True)
    assert [s.kind for s in server if s.part in ("mlflow", "mlartifacts")] == ["skipped", "skipped"]


def test_restore_plan_needs_the_same_kind_of_store():
    manifest = {"parts": {"predictions": {"kind": "sqlite", "file": "predictions.sqlite",
                                          "rows": {"predictions": 3}}}}  # fmt: skip
    with pytest.raises(BackupError, match="same kind of store"):
        backup.plan_restore(manifest, _loc(predictions="postgresql://u@h/db"))
    (step,) = backup.plan_restore(manifest, _loc())
    assert step.tables == ("predictions",) and step.where == "sqlite:////s/predictions.db"


# --- a prediction store, in-process -------------------------------------------------------


def _fill(url: str, n: int) -> None:
    upgrade(url)
    engine = sa.create_engine(url)
    rows = [prediction_row({"prediction_id": f"p{i:05d}", "created_at": T0, "model_name": "m",
                            "model_version": "1", "customer_id": str(i % 7), "inputs": {"x": i, "s": "é"},
                            "probability": i / n, "risk_score": i % 100, "risk_band": "low",
                            "decision": "approve", "reasons": [{"feature": "x", "value": i}]})
            for i in range(n)]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows)
        conn.execute(sa.insert(outcomes), [{"prediction_id": f"p{i:05d}", "customer_id": None,
                                            "defaulted": i % 2, "observed_at": T0, "received_at": T0}
                                           for i in range(0, n, 3)])  # fmt: skip
    engine.dispose()


def _rows(url: str) -> dict[str, list]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = {
            t.name: sorted(map(tuple, conn.execute(sa.select(t)))) for t in (predictions, outcomes)
        }
    engine.dispose()
    return out


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_prediction_store_round_trip_and_refusals(tmp_path, pg_db, kind):
    if kind == "sqlite":
        src, dst = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'restored' / 'p.db'}"
    else:  # trust auth ignores the password: it is there to be redacted
        src = pg_db().replace("postgres@", "postgres:s3cret@")
        dst = src.rsplit("/", 1)[0] + f"/{src.rsplit('/', 1)[1]}_restored"
    _fill(src, 1500)
    root = tmp_path / "backups"
    path = backup.create(root, ("predictions",), _loc(predictions=src))
    manifest = json.loads((path / "manifest.json").read_text())
    part = manifest["parts"]["predictions"]
    assert manifest["status"] == "ok" and "s3cret" not in (path / "manifest.json").read_text()
    assert part["rows"]["predictions"] == 1500 and part["rows"]["outcomes"] == 500
    assert part["sha256"] == hashlib.sha256((path / part["file"]).read_bytes()).hexdigest()
    assert oct((path / part["file"]).stat().st_mode & 0o777) == "0o600"  # personal data

    target = _loc(predictions=dst)
    try:
        report = backup.restore(path, target, ("predictions",))
        assert report["parts"]["predictions"]["restored"] == part["rows"]
        assert _rows(dst) == _rows(src)
        with pytest.raises(BackupError, match="not empty"):
            backup.restore(path, target, ("predictions",))
        backup.restore(path, target, ("predictions",), force=True)
        assert _rows(dst) == _rows(src)
        data = bytearray((path / part["file"]).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        (path / part["file"]).write_bytes(bytes(data))
        with pytest.raises(BackupError, match="sha256"):
            backup.restore(path, target, ("predictions",), force=True)
    finally:
        if kind == "postgresql":
            admin = sa.create_engine(
                src.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
            )
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    f'DROP DATABASE IF EXISTS "{dst.rsplit("/", 1)[1]}" WITH (FORCE)'
                )
            admin.dispose()


# --- the whole system, under traffic ------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory, raw, params):
    """A repository copy with a trained, promoted champion and its bento. BentoML's store
    lives outside the state directory: a bento is rebuilt from @champion, not backed up."""
    tmp = tmp_path_factory.mktemp("backup")
    repo = make_repo_copy(tmp, stratified_sample(raw, params.data.target, 3000),
                          {"BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"})  # fmt: skip
    repo.set_params(**{"promotion.min_auc": 0.6})
    repo.commit("a small sample")
    repo.dvc("repro")
    repo.py("-m", "pipelines.promote", "--reason", "backup test")
    repo.py("-m", "pipelines.bento")
    return repo, tmp


class Traffic(threading.Thread):
    """/predict batches and, one batch behind, their outcomes, until stopped."""

    def __init__(self, url: str, batches: list[list[dict]], labels: list[list[int]]) -> None:
        super().__init__(daemon=True)
        self.url, self.batches, self.labels = url, batches, labels
        self.halt = threading.Event()
        self.acked: list[tuple[float, str]] = []  # (monotonic time, prediction_id)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(
                base_url=self.url, headers={"X-API-Key": KEYS["main"]}, timeout=30
            ) as c:
                behind: list[dict] = []
                i = 0
                while not self.halt.is_set():
                    k = i % len(self.batches)
                    resp = c.post("/predict", json={"records": self.batches[k], "explain": "none"})
                    resp.raise_for_status()
                    ids = [p["prediction_id"] for p in resp.json()["predictions"]]
                    self.acked += [(time.monotonic(), pid) for pid in ids]
                    if behind:
                        c.post("/outcomes", json={"outcomes": behind}).raise_for_status()
                    behind = [
                        {"prediction_id": p, "defaulted": y}
                        for p, y in zip(ids, self.labels[k], strict=True)
                    ]
                    i += 1
                    time.sleep(0.02)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


TABLES = {"predictions": "prediction_id", "outcomes": "prediction_id", "interventions": "id"}


def _snapshot(url: str, ids_only: bool = False) -> dict[str, dict]:
    """{table: {key: row}} of the prediction store (rows as tuples, every column)."""
    engine = sa.create_engine(url)
    out: dict[str, dict] = {}
    with engine.connect() as conn:
        for table, key in TABLES.items():
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            query = sa.select(t.c[key]) if ids_only else sa.select(t)
            rows = conn.execute(query).all()
            keys = [r._mapping[key] for r in rows]
            assert len(keys) == len(set(keys)), f"{table}: duplicate keys"
            out[table] = {r._mapping[key]: tuple(r) for r in rows}
    engine.dispose()
    return out


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _registry(uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    model = client.get_registered_model("credit-risk")
    versions = {v.version: (v.source, v.run_id, v.status, dict(v.tags), sorted(v.aliases))
                for v in client.search_model_versions("name='credit-risk'")}  # fmt: skip
    return {"aliases": dict(model.aliases), "tags": dict(model.tags), "versions": versions,
            "runs": len(client.search_runs([e.experiment_id for e in client.search_experiments()]))}  # fmt: skip


def _golden(uri: str, dst: Path) -> tuple[np.ndarray, list[float]]:
    """The @champion of the store at `uri`, downloaded and loaded through MLflow, scoring
    its own golden batch; with the probabilities XGBoost gave at training."""
    import mlflow

    from pipelines.evaluate import score
    from riskloop.package import ModelPackage

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pkg = ModelPackage.download("models:/credit-risk@champion", dst)
        probs, _ = score(pkg, pd.DataFrame.from_records(pkg.golden["records"]))
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    return np.asarray(probs, dtype=float), pkg.golden["probability"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_backup_under_traffic_restores_into_fresh_stores(
    system, params, kind, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    repo, tmp = system
    state = tmp / "state"
    with pg_databases() as create_db:
        if kind == "sqlite":
            src_db, fresh_db = f"sqlite:///{state / 'predictions.db'}", None
        else:
            src_db, fresh_db = create_db().replace("postgres@", "postgres:s3cret@"), create_db()
        env = {**repo.env, "DATABASE_URL": src_db, "RISKLOOP_BACKUP_DIR": str(tmp_path / "backups")}
        graveyard = tmp_path / "destroyed"
        try:
            _backup_destroy_restore(repo, state, env, src_db, fresh_db, params, tmp_path, graveyard)
        finally:  # the next parameter starts from the original system
            if (graveyard / "state").exists():
                shutil.rmtree(state, ignore_errors=True)
                shutil.move(graveyard / "state", state)
            if (graveyard / "cache").exists():
                shutil.rmtree(repo.path / ".dvc/cache", ignore_errors=True)
                shutil.move(graveyard / "cache", repo.path / ".dvc/cache")


def _backup_destroy_restore(repo, state, env, src_db, fresh_db, params, tmp_path, graveyard):
    test = pd.read_parquet(repo.path / "data/prepared/test.parquet").head(400)
    batches = requests_of(test, params, 20, customers=True)
    labels = [
        test[params.data.target].astype(int).tolist()[i : i + 20] for i in range(0, len(test), 20)
    ]
    server = Server(repo.env["BENTOML_HOME"], state, src_db,
                    {"RATE_LIMIT_MAX": "1000000", "SPOOL_DIR": str(tmp_path / "spool")})  # fmt: skip
    traffic = Traffic(server.url, batches, labels)
    try:
        traffic.start()
        while len(traffic.acked) < 200 and traffic.error is None:
            time.sleep(0.1)
        before = _snapshot(src_db, ids_only=True)  # committed before the backup began
        t0 = time.monotonic()
        proc = _run(repo, env, "create")
        backup_s = time.monotonic() - t0
        during = sum(1 for t, _ in list(traffic.acked) if t0 <= t <= t0 + backup_s)
        time.sleep(0.5)
    finally:
        traffic.halt.set()
        traffic.join(30)
        server.stop()  # graceful: the log writer flushes what it answered
    assert traffic.error is None, traffic.error
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert during > 0, "no traffic while the backup ran"
    source = _snapshot(src_db)
    acked = {pid for _, pid in traffic.acked}
    assert acked <= set(source["predictions"])  # the service lost nothing it answered
    (path,) = Path(env["RISKLOOP_BACKUP_DIR"]).iterdir()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["status"] == "ok" and "s3cret" not in (path / "manifest.json").read_text()
    assert set(manifest["parts"]) == set(backup.PARTS)
    assert all(p["kind"] in ("sqlite", "postgresql", "tar") for p in manifest["parts"].values())
    mlflow_uri = f"sqlite:///{state / 'mlflow.db'}"
    registry, artifacts = _registry(mlflow_uri), _tree(state / "mlartifacts")
    golden_before, golden_xgb = _golden(mlflow_uri, tmp_path / "champion-before")
    raw_csv = (repo.path / "data/raw/UCI_Credit_Card.csv").read_bytes()

    # Destroy: the state directory (MLflow, Optuna, SQLite store), the DVC cache, the database.
    graveyard.mkdir()
    shutil.move(state, graveyard / "state")
    shutil.move(repo.path / ".dvc/cache", graveyard / "cache")
    if fresh_db:
        admin = sa.create_engine(
            src_db.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{src_db.rsplit("/", 1)[1]}" WITH (FORCE)')
        admin.dispose()

    # Restore into fresh stores named by the environment alone: a new state directory (so
    # MLflow's artifact locations must move) and, on PostgreSQL, a new database.
    fresh = tmp_path / "fresh-state"
    renv = {**env, "RISKLOOP_STATE_DIR": str(fresh)}
    renv.pop("DATABASE_URL")
    if fresh_db:
        renv["DATABASE_URL"] = fresh_db
    t0 = time.monotonic()
    proc = _run(repo, renv, "restore", "--json")
    restore_s = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    again = _run(repo, renv, "restore")
    assert again.returncode == 1 and "not empty" in again.stderr

    restored_db = fresh_db or f"sqlite:///{fresh / 'predictions.db'}"
    restored = _snapshot(restored_db)
    for table, rows in restored.items():
        assert set(before[table]) <= set(rows), (
            f"{table}: rows committed before the backup are missing"
        )
        assert set(rows) <= set(source[table]), f"{table}: restored rows the source never held"
        assert all(rows[k] == source[table][k] for k in rows), f"{table}: a restored row differs"
        assert len(rows) == manifest["parts"]["predictions"]["rows"][table]
    assert report["parts"]["predictions"]["restored"] == manifest["parts"]["predictions"]["rows"]
    assert _registry(f"sqlite:///{fresh / 'mlflow.db'}") == registry
    assert _tree(fresh / "mlartifacts") == artifacts
    assert report["parts"]["mlflow"]["artifact_locations_moved"] > 0
    golden_after, _ = _golden(f"sqlite:///{fresh / 'mlflow.db'}", tmp_path / "champion-after")
    np.testing.assert_array_equal(golden_after, golden_before)
    np.testing.assert_allclose(golden_after, golden_xgb, rtol=0, atol=1e-6)
    assert report["parts"]["dvc"]["contains_data"]
    (repo.path / "data/raw/UCI_Credit_Card.csv").unlink()
    repo.dvc("checkout", "data.dvc", "-f")
    assert (repo.path / "data/raw/UCI_Credit_Card.csv").read_bytes() == raw_csv

    sizes = {p: r.get("bytes", 0) for p, r in manifest["parts"].items()}
    kind = "postgresql" if fresh_db else "sqlite"
    print(f"\n[backup {kind}] {len(acked)} predictions answered; "
          f"in the backup: {manifest['parts']['predictions']['rows']}; committed before it began: "
          f"{ {t: len(v) for t, v in before.items()} }; after: { {t: len(v) for t, v in source.items()} }\n"
          f"[backup {kind}] backup {manifest['duration_s']:.2f} s of work ({backup_s:.1f} s with the "
          f"process), {manifest['bytes'] / 1e6:.1f} MB {sizes}; restore {report['seconds']:.2f} s of work "
          f"({restore_s:.1f} s with the process)")  # fmt: skip


def _run(repo, env: dict[str, str], *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipelines.backup", *args], cwd=repo.path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
