"""MLflow and lineage adapters: tracking URI, experiment, git commit, data version."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from riskloop import stores
from riskloop.settings import RegistrySettings
from training.registry import Registry


def connect(registry: RegistrySettings) -> tuple[MlflowClient, str, Registry]:
    """Point MLflow at the configured store; return the client, experiment id and registry."""
    uri = stores.tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(registry.experiment)
    if exp is None:
        exp_id = client.create_experiment(
            registry.experiment, artifact_location=stores.artifact_root()
        )
    else:
        exp_id = exp.experiment_id
    return client, exp_id, Registry(registry, client)


def git_commit() -> str:
    """HEAD's commit, with `-dirty` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_data_hash(dvc_file: str | Path = "data.dvc") -> str:
    """The content hash DVC pins for the raw data (the `.dir` md5 in data.dvc)."""
    path = Path(dvc_file)
    if not path.exists():
        return "untracked"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "untracked")).removesuffix(".dir")


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
