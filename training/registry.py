"""The one adapter to the MLflow model registry: URIs, aliases, promotion and rollback.
Serving loads by alias only; every alias move is recorded as version tags."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from riskloop.errors import RegistryError
from riskloop.settings import RegistrySettings


def alias_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


def version_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def actor() -> str:
    return os.environ.get("RISKLOOP_ACTOR") or getpass.getuser()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Registry:
    settings: RegistrySettings
    client: MlflowClient

    @property
    def name(self) -> str:
        return self.settings.model_name

    def by_alias(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def champion(self) -> ModelVersion | None:
        return self.by_alias(self.settings.champion_alias)

    def challenger(self) -> ModelVersion | None:
        return self.by_alias(self.settings.challenger_alias)

    def version(self, version: str | int) -> ModelVersion:
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version}") from exc

    def register_challenger(self, model_uri: str, tags: dict[str, str]) -> ModelVersion:
        """Create a version with all its lineage tags in one call, then point @challenger at
        it. If the alias cannot be set the version is deleted: no half-registered entries."""
        mv = mlflow.register_model(model_uri, self.name, tags=tags)
        try:
            self.client.set_registered_model_alias(
                self.name, self.settings.challenger_alias, mv.version
            )
        except Exception:
            self.client.delete_model_version(self.name, mv.version)
            raise
        return mv

    def set_tags(self, version: str | int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def move_champion(self, version: str | int, reason: str, previous: str | None) -> None:
        """Point @champion at `version` and record who/when/why/previous on it."""
        self.set_tags(version, {
            "promoted_by": actor(), "promoted_at": now_iso(), "promotion_reason": reason,
            "previous_champion": str(previous) if previous else "none",
        })  # fmt: skip
        self.client.set_registered_model_alias(
            self.name, self.settings.champion_alias, str(version)
        )

    def rollback(self, reason: str) -> tuple[str, str]:
        """Restore the champion recorded as previous on the current one; returns (from, to)."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no @{self.settings.champion_alias} to roll back")
        previous = current.tags.get("previous_champion", "none")
        if previous == "none":
            raise RegistryError(
                f"{self.name} v{current.version} is the first champion; there is nothing to roll back to"
            )
        self.version(previous)  # fails clearly if it was deleted
        self.set_tags(current.version, {"rolled_back_by": actor(), "rolled_back_at": now_iso(),
                                        "rollback_reason": reason})  # fmt: skip
        restored_previous = self.version(previous).tags.get("previous_champion", "none")
        self.move_champion(
            previous, f"rollback from v{current.version}: {reason}", restored_previous
        )
        return str(current.version), previous
