"""Where riskloop keeps its state: one place that turns the environment into absolute
store URIs. Embedded defaults (SQLite files under the state directory) need no server;
MLFLOW_TRACKING_URI and OPTUNA_STORAGE point the same code at PostgreSQL or a server."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from riskloop.errors import SettingsError

# `dvc exp run --temp/--queue` runs stages in <repo>/.dvc/tmp/exps/<id>/; the state must
# stay in the real repository or every experiment would log to a store deleted after it.
_DVC_TEMP_MARKER = ("/.dvc/tmp/exps/",)
_SQL_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql", "mssql")


class StoreEnv(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    state_dir: Path | None = Field(default=None, validation_alias="RISKLOOP_STATE_DIR")
    mlflow_tracking_uri: str | None = Field(default=None, validation_alias="MLFLOW_TRACKING_URI")
    optuna_storage: str | None = Field(default=None, validation_alias="OPTUNA_STORAGE")
    # where a tracking server riskloop runs keeps its data (`make stack` sets them, as
    # `mlflow server`'s options): what `make backup` copies when MLFLOW_TRACKING_URI is a server
    mlflow_backend_store_uri: str | None = Field(
        default=None, validation_alias="MLFLOW_BACKEND_STORE_URI"
    )
    mlflow_artifacts_destination: Path | None = Field(
        default=None, validation_alias="MLFLOW_ARTIFACTS_DESTINATION"
    )


def project_root(cwd: Path | None = None) -> Path:
    """The real repository root, also from inside a DVC temp experiment."""
    here = (cwd or Path.cwd()).resolve()
    text = here.as_posix() + "/"
    for marker in _DVC_TEMP_MARKER:
        if marker in text:
            return Path(text.split(marker, 1)[0])
    return here


def state_dir(env: StoreEnv | None = None) -> Path:
    env = env or StoreEnv()
    path = env.state_dir if env.state_dir else project_root() / "state"
    return path.expanduser().resolve()


def deployment_file(env: StoreEnv | None = None) -> Path:
    """The deployment record `make deploy` writes and a running service follows."""
    return state_dir(env) / "deploy" / "current.json"


def normalize_db_url(url: str, var: str) -> str:
    """Check a SQLAlchemy URL's scheme; a bare postgresql:// gets psycopg2, which is what
    is installed (SQLAlchemy 2.1 would otherwise pick psycopg 3)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _SQL_SCHEMES:
        raise SettingsError(
            f"{var}={url.split('@')[-1]!r} is not a database URL; expected sqlite:///… or "
            "postgresql+psycopg2://user@host:5432/db"
        )
    if scheme == "postgresql":
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def is_tracking_server(uri: str) -> bool:
    """An MLflow tracking server (it owns its stores), not a database or file store."""
    return uri.startswith(("http://", "https://", "databricks"))


def tracking_uri(env: StoreEnv | None = None) -> str:
    env = env or StoreEnv()
    uri = env.mlflow_tracking_uri
    if not uri:
        return f"sqlite:///{state_dir(env) / 'mlflow.db'}"
    if is_tracking_server(uri):
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path would follow the working directory (see _DVC_TEMP_MARKER).
        return f"sqlite:///{(project_root() / uri.removeprefix('sqlite:///')).resolve()}"
    return normalize_db_url(uri, "MLFLOW_TRACKING_URI")


def artifact_root(env: StoreEnv | None = None) -> str | None:
    """Local artifact location for embedded/database stores; a tracking server decides its own."""
    uri = tracking_uri(env)
    if is_tracking_server(uri):
        return None
    return (state_dir(env) / "mlartifacts").as_uri()


def optuna_storage(env: StoreEnv | None = None) -> str:
    env = env or StoreEnv()
    if not env.optuna_storage:
        return f"sqlite:///{state_dir(env) / 'optuna.db'}"
    return normalize_db_url(env.optuna_storage, "OPTUNA_STORAGE")


def redact(url: str) -> str:
    """A URL without its password, for messages and tags."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
