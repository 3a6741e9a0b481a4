"""The one adapter to the MLflow model registry: URIs, aliases, promotion, rollback and their
audit trail, and the rule for which training run moves @challenger (`training_origin`: a DVC
experiment never does). Serving loads by alias only.

Every alias move is recorded twice: as tags on the version it points at (who, when, why,
previous champion; the latest move), and as one append-only entry in the registered model's
tags (`riskloop.audit.<time>-<id>`: action, from, to, who, when, why, gates), which the MLflow
UI shows on the model's page and `make history` prints. Entries are never overwritten."""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Mapping
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
# DVC 3 sets both in every `dvc exp run` stage (workspace, --temp, --queue: all go through
# dvc/repo/experiments/queue/base.py `_stash_exp`), never in `dvc repro`; values from dvc.env.
DVC_EXP_NAME = "DVC_EXP_NAME"
DVC_EXP_BASELINE_REV = "DVC_EXP_BASELINE_REV"
# What an experiment's -S edits and a person edits by hand: the pipeline and its numbers.
# Not data.dvc/dvc.lock: a retrain re-pins the data and must still yield a challenger.
PIPELINE_FILES = ("dvc.yaml", "params.yaml")


def alias_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


def version_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def actor() -> str:
    return os.environ.get("RISKLOOP_ACTOR") or getpass.getuser()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Origin:
    """Where a training run came from, which decides whether its version becomes @challenger.

    An experiment never moves @challenger: many run at a time, queued, from throwaway params,
    so "whatever ran last" is no reviewer's choice; its version is tagged with the experiment's
    name and baseline, and `make challenger VERSION=N` makes it the challenger on purpose.
    A workspace run (`dvc repro`, a retrain) does move it, also with uncommitted edits to the
    pipeline files, tagged `workspace: modified`: DVC's own workflow is edit, repro, then
    commit the dvc.lock that records the run, so demanding a commit first would mean training
    twice, and the workspace is the one place a person runs on purpose, one run at a time.
    The tag (and `git_commit`'s `-dirty`) tells a reviewer no commit holds that pipeline."""

    experiment: str | None = None
    baseline_rev: str | None = None
    pipeline_modified: bool | None = None  # None: not known (no git checkout)

    @property
    def sets_challenger(self) -> bool:
        return self.experiment is None

    def tags(self) -> dict[str, str]:
        if self.experiment is not None:
            return {
                "experiment": self.experiment,
                "experiment_baseline": self.baseline_rev or "unknown",
            }
        state = {True: "modified", False: "committed", None: "unknown"}[self.pipeline_modified]
        return {"workspace": state}


def training_origin(env: Mapping[str, str], pipeline_modified: bool | None) -> Origin:
    """The rule, pure: a DVC experiment's name in the environment makes it an experiment."""
    name = env.get(DVC_EXP_NAME, "").strip()
    if name:
        return Origin(experiment=name, baseline_rev=env.get(DVC_EXP_BASELINE_REV) or None)
    return Origin(pipeline_modified=pipeline_modified)


def registration_summary(name: str, version: str, origin: Origin, alias: str,
                         before: str | None) -> str:  # fmt: skip
    """The one line train ends with: what was registered and what happened to @challenger."""
    was = f"v{before}" if before else "none"
    if not origin.sets_challenger:
        return (f"registered {name} v{version} (experiment {origin.experiment}), @{alias} unchanged "
                f"({was}); make it the challenger with `make challenger VERSION={version}`")  # fmt: skip
    modified = "; pipeline files differ from git HEAD" if origin.pipeline_modified else ""
    return f"registered {name} v{version} as @{alias} (was {was}{modified})"


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

    def register(self, model_uri: str, tags: dict[str, str], as_challenger: bool) -> ModelVersion:
        """Create a version with all its lineage tags in one call (one store transaction), then
        point @challenger at it if `as_challenger`. If the alias cannot be set the version is
        deleted: no half-registered entries."""
        mv = mlflow.register_model(model_uri, self.name, tags=tags)
        if not as_challenger:
            return mv
        try:
            self.client.set_registered_model_alias(
                self.name, self.settings.challenger_alias, mv.version
            )
        except Exception:
            self.client.delete_model_version(self.name, mv.version)
            raise
        return mv

    def register_challenger(self, model_uri: str, tags: dict[str, str]) -> ModelVersion:
        return self.register(model_uri, tags, as_challenger=True)

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
    def move_challenger(self, version: str | int, reason: str) -> tuple[str | None, str]:
        """Point @challenger at an existing version on purpose; tag it with who/when/why and
        audit the move. Returns (previous challenger or None, new one); no move, no audit entry
        when it already is the challenger.
        A rolled-back version is refused: the rollback was a reviewer's verdict on it."""
        mv = self.version(version)
        alias = self.settings.challenger_alias
        if mv.tags.get("rolled_back") == "true":
            raise RegistryError(
                f"{self.name} v{mv.version} was rolled back ({mv.tags.get('rolled_back_at')}, by "
                f"{mv.tags.get('rolled_back_by')}: {mv.tags.get('rollback_reason')}); it cannot be "
                f"@{alias} again. To serve it anyway, promote it by name (still gated): "
                f"make promote VERSION={mv.version} REASON=…"
            )
        current = self.challenger()
        previous = str(current.version) if current is not None else None
        if previous == str(mv.version):
            return previous, previous
        self.set_tags(mv.version, {"challenger_set_by": actor(), "challenger_set_at": now_iso(),
                                   "challenger_reason": reason,
                                   "previous_challenger": previous or "none"})  # fmt: skip
        self.client.set_registered_model_alias(self.name, alias, str(mv.version))
        self.record("challenger", previous, str(mv.version), reason)
        return previous, str(mv.version)

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
