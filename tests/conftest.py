"""Shared fixtures: the real params and data, throwaway PostgreSQL databases, repo copies."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from riskloop.settings import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get(
    "RISKLOOP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


# mlflow.set_tracking_uri/set_registry_uri keep the URI in process globals AND export it as
# MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI, which every later MlflowClient given no registry URI,
# and every subprocess, reads: one test pointing MLflow at its own store sent a later test's
# client (and its stack's processes) to the wrong registry (CI: test_stack never saw its v2).
# Every test ends with both as they were before it.
_MLFLOW_URI_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
)
MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def needed(msg: str) -> None:
    """A tool a test needs is missing: skip, saying why; fail under RISKLOOP_REQUIRE_TOOLS=1
    (CI, where `make test` installs it)."""
    if os.environ.get("RISKLOOP_REQUIRE_TOOLS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def debian_tool(command: str, package: str) -> str:
    """The path of `command`, from Debian's `package` (`make tools` installs it); else needed()."""
    path = shutil.which(command)
    if path is None:
        needed(f"{command} not installed (Debian package {package}; `make test` installs it)")
    return path


def restore_mlflow_uris(env: dict[str, str | None]) -> None:
    """Unset MLflow's URI globals; put the URI variables back to `env` (None: absent)."""
    for module, name in _MLFLOW_URI_GLOBALS:
        mod = sys.modules.get(module)
        if mod is not None:
            assert hasattr(mod, name), f"MLflow moved {module}.{name}: update tests/conftest.py"
            setattr(mod, name, None)
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    before = {var: os.environ.get(var) for var in MLFLOW_URI_ENV}
    yield
    restore_mlflow_uris(before)


# riskloop's own tests run on the dataset it ships (they name its columns); `init-data --write`
# makes params.yaml describe yours, and then they would fail by the hundred for no fault
SHIPPED_RAW_FILE = "UCI_Credit_Card.csv"


def pytest_sessionstart(session: pytest.Session) -> None:
    raw_file = load_params(ROOT / "params.yaml").data.raw_file
    if raw_file != SHIPPED_RAW_FILE:
        raise pytest.UsageError(
            f"params.yaml describes your dataset ({raw_file}); riskloop's own tests run on the "
            f"shipped one ({SHIPPED_RAW_FILE}). Run them in a clean clone of riskloop "
            "(`git clone ... && make test`), or with your changes stashed (`git stash`); "
            "tests/pipelines/test_own_data.py is the test of a dataset of another shape."
        )


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def raw(params: Params) -> pd.DataFrame:
    path = ROOT / params.data.raw_path
    if not path.exists():
        pytest.fail(f"{path} missing: run `make data` (make test does it)")
    return pd.read_csv(path)


def stratified_sample(raw: pd.DataFrame, target: str, n: int, seed: int = 0) -> pd.DataFrame:
    frac = n / len(raw)
    return raw.groupby(target, group_keys=False).sample(frac=frac, random_state=seed).sort_index()


def _pg_admin() -> sa.Engine:
    """An autocommit engine on the test server; skips (or fails under
    RISKLOOP_REQUIRE_POSTGRES=1, as in CI) with the reason when no server answers."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        msg = f"PostgreSQL unreachable at {PG_URL}: {str(exc).splitlines()[0]}"
        if os.environ.get("RISKLOOP_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return admin


@contextlib.contextmanager
def pg_databases():
    """Factory of fresh PostgreSQL databases, all dropped on exit."""
    admin = _pg_admin()
    created: list[str] = []

    def create() -> str:
        name = f"riskloop_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_URL.rsplit("/", 1)[0] + f"/{name}"

    try:
        yield create
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_db():
    with pg_databases() as create:
        yield create


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: int = 900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class RepoCopy:
    """A throwaway git+DVC copy of the repository with its own state dir and a data sample."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def run(self, *cmd: str, check: bool = True, timeout: int = 900):
        return run(list(cmd), self.path, self.env, check=check, timeout=timeout)

    def dvc(self, *args: str, check: bool = True):
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check)

    def py(self, *args: str, check: bool = True):
        return self.run(sys.executable, *args, check=check)

    def set_params(self, **dotted: object) -> None:
        import yaml

        p = self.path / "params.yaml"
        doc = yaml.safe_load(p.read_text())
        for key, value in dotted.items():
            node = doc
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        p.write_text(yaml.safe_dump(doc, sort_keys=False))

    def write_raw(self, frame: pd.DataFrame, version: bool = True,
                  name: str = "UCI_Credit_Card.csv") -> None:  # fmt: skip
        path = self.path / "data/raw" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        if version:
            self.dvc("add", "data/raw", "-q")
            raw_dvc = self.path / "data/raw.dvc"
            if raw_dvc.exists():  # DVC 3 writes data/raw.dvc; riskloop pins data.dvc at the root
                (self.path / "data.dvc").write_text(
                    raw_dvc.read_text().replace("path: raw", "path: data/raw")
                )
                raw_dvc.unlink()

    def commit(self, msg: str = "update") -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", msg, "--allow-empty")


def make_repo_copy(
    tmp: Path, sample: pd.DataFrame, extra_env: dict[str, str] | None = None
) -> RepoCopy:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    repo = tmp / "repo"
    for rel in files.split():
        if not (ROOT / rel).exists():
            continue
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(tmp / "state"), "PYTHONWARNINGS": "ignore",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        env.pop(var, None)
    env.update(extra_env or {})
    copy = RepoCopy(repo, env)
    copy.run("git", "init", "-q")
    copy.write_raw(sample)
    copy.set_params(**{"train.n_trials": 3, "train.cv_folds": 2, "train.timeout_s": 120, "train.nthread": 1,
                       "train.max_boost_rounds": 300})  # fmt: skip
    copy.commit("init")
    return copy


@pytest.fixture(scope="session")
def champion(tmp_path_factory, raw, params):
    """One small registered champion and its bento, built once for every test that serves it
    (tests/serving, tests/dashboard)."""
    from tests.serving.server import build_bento, train_champion

    state = tmp_path_factory.mktemp("serving-state")
    model, customers = train_champion(state, raw, params)
    # the default layout keeps the BentoML store under the repo's state/: build twice there so
    # a bentofile pattern that matches earlier bentos (recursive copies) fails here
    bento_home = ROOT / "state" / f"bentoml-test-{uuid.uuid4().hex[:8]}"
    build_bento(state, bento_home)
    build_bento(state, bento_home)
    yield {"state": state, "bento_home": bento_home, "model": model, "customers": customers}
    shutil.rmtree(bento_home, ignore_errors=True)
