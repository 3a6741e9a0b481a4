"""The Models page's facts from the MLflow registry, read only: @champion and @challenger with
their test metrics and model cards, and the promotion/rollback audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from riskloop import stores
from riskloop.settings import RegistrySettings
from training.registry import Registry


class RegistryUnavailable(Exception):
    pass


def _unreadable(exc: MlflowException) -> RegistryUnavailable:
    return RegistryUnavailable(f"the MLflow registry cannot be read: {str(exc)[:200]}")


@dataclass(frozen=True)
class VersionFacts:
    alias: str
    version: str
    run_id: str | None
    created: int | None  # ms since the epoch
    metrics: dict[str, float] = field(default_factory=dict)
    # the card.* tags evaluate sets: verdict, gates, artifact (the card's path in the run), …
    card: dict[str, str] = field(default_factory=dict)


def open_registry(settings: RegistrySettings) -> Registry:
    """The registry the pipeline uses, without creating anything (a missing SQLite store is
    'nothing registered yet', not a new empty database)."""
    uri = stores.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise RegistryUnavailable(f"no MLflow store at {stores.redact(uri)} yet: run `make run`")
    return Registry(settings, MlflowClient(tracking_uri=uri, registry_uri=uri))


def facts(registry: Registry, alias: str) -> VersionFacts | None:
    try:
        mv = registry.by_alias(alias)
        if mv is None:
            return None
        run = registry.client.get_run(mv.run_id) if mv.run_id else None
    except MlflowException as exc:
        raise _unreadable(exc) from None
    metrics = {k: v for k, v in (run.data.metrics if run else {}).items() if k.startswith("test_")}
    card = {k.removeprefix("card."): v for k, v in (mv.tags or {}).items() if k.startswith("card.")}
    return VersionFacts(alias, str(mv.version), mv.run_id, mv.creation_timestamp, metrics, card)


def model_card(v: VersionFacts) -> bytes | None:
    """The version's model card HTML (self-contained), where its `card.artifact` tag says
    evaluate logged it; None for a version evaluated before model cards existed."""
    if not (v.run_id and v.card.get("artifact")):
        return None
    try:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(
            run_id=v.run_id, artifact_path=v.card["artifact"], tracking_uri=stores.tracking_uri()
        )
    except (MlflowException, OSError):
        return None
    return Path(path).read_bytes()


def history(registry: Registry) -> list[dict[str, Any]]:
    try:
        return registry.history()
    except MlflowException as exc:
        raise _unreadable(exc) from None
