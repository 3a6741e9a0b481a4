"""The one adapter to the MLflow model registry: URIs, aliases, promotion, rollback and their
audit trail. Serving loads by alias only.

Every alias move is recorded twice: as tags on the version it points at (who, when, why,
previous champion; the latest move), and as one append-only entry in the registered model's
tags (`riskloop.audit.<time>-<id>`: action, from, to, who, when, why, gates), which the MLflow
UI shows on the model's page and `make history` prints. Entries are never overwritten."""

from __future__ import annotations

import getpass
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from riskloop.errors import RegistryError
from riskloop.settings import RegistrySettings

AUDIT_PREFIX = "riskloop.audit."


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

    def by_fingerprint(self, model_sha256: str) -> ModelVersion:
        """The newest version registered for this model fingerprint (train.json names it)."""
        found = self.client.search_model_versions(
            f"name = '{self.name}' and tags.model_sha256 = '{model_sha256}'"
        )
        if not found:
            raise RegistryError(
                f"no version of {self.name} carries model_sha256 {model_sha256[:12]}…: "
                "run the train stage (`dvc repro`) against this MLflow store"
            )
        return max(found, key=lambda v: int(v.version))

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

    # ------------------------------------------------------------------ audit trail
    def record(self, action: str, from_version: str | None, to_version: str | None,
               reason: str, **extra: Any) -> dict[str, Any]:  # fmt: skip
        """Append one entry to the audit trail; a new key each time, so nothing is lost."""
        at = datetime.now(UTC)
        entry = {"action": action, "from": from_version, "to": to_version, "by": actor(),
                 "at": at.isoformat(timespec="seconds"), "reason": reason, **extra}  # fmt: skip
        key = f"{AUDIT_PREFIX}{at.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:6]}"
        self.client.set_registered_model_tag(self.name, key, json.dumps(entry, sort_keys=True))
        return entry

    def history(self) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first."""
        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return []
        return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(AUDIT_PREFIX)]

    # ------------------------------------------------------------------ alias moves
    def move_champion(self, version: str | int, reason: str, previous: str | None,
                      action: str = "promote", **extra: Any) -> None:  # fmt: skip
        """Point @champion at `version`, tag it with who/when/why/previous, audit the move."""
        self.set_tags(version, {
            "promoted_by": actor(), "promoted_at": now_iso(), "promotion_reason": reason,
            "previous_champion": str(previous) if previous else "none",
        })  # fmt: skip
        self.client.set_registered_model_alias(
            self.name, self.settings.champion_alias, str(version)
        )
        self.record(action, str(previous) if previous else None, str(version), reason, **extra)

    def rollback(self, reason: str) -> tuple[str, str]:
        """Restore the champion recorded as previous on the current one; returns (from, to).
        The rolled-back version is tagged as such and keeps @challenger if it has it, so a
        reviewer sees it and a plain `make promote` refuses to put it back."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no @{self.settings.champion_alias} to roll back")
        previous = current.tags.get("previous_champion", "none")
        if previous == "none":
            raise RegistryError(
                f"{self.name} v{current.version} is the first champion; there is nothing to roll back to"
            )
        restored_previous = self.version(previous).tags.get("previous_champion", "none")
        self.set_tags(current.version, {"rolled_back": "true", "rolled_back_by": actor(),
                                        "rolled_back_at": now_iso(), "rollback_reason": reason})  # fmt: skip
        self.set_tags(previous, {
            "promoted_by": actor(), "promoted_at": now_iso(),
            "promotion_reason": f"rollback from v{current.version}: {reason}",
            "previous_champion": restored_previous,
        })  # fmt: skip
        self.client.set_registered_model_alias(self.name, self.settings.champion_alias, previous)
        self.record("rollback", str(current.version), previous, reason)
        return str(current.version), previous
