"""Serving environment: typed, checked at start. Production refuses to start unsafe."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from riskloop import stores
from riskloop.errors import SettingsError
from serving.lifecycle import listening_sockets


def _csv(value: object) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value or [])  # type: ignore[arg-type]


class ServingEnv(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="API_KEYS"
    )
    rate_limit_max: int = Field(default=6000, ge=1, validation_alias="RATE_LIMIT_MAX")
    rate_limit_window: float = Field(default=60.0, gt=0, validation_alias="RATE_LIMIT_WINDOW")
    # wrong or missing API keys per client address per RATE_LIMIT_WINDOW before 429s
    auth_failures_max: int = Field(default=20, ge=1, validation_alias="AUTH_FAILURES_MAX")
    # work per key per window: rows scored, and rows with exact contributions (reasons)
    rate_limit_rows: int = Field(default=1_000_000, ge=1, validation_alias="RATE_LIMIT_ROWS")
    rate_limit_explained_rows: int = Field(
        default=100_000, ge=1, validation_alias="RATE_LIMIT_EXPLAINED_ROWS"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CORS_ORIGINS"
    )
    environment: Literal["development", "staging", "production"] = Field(
        default="development", validation_alias="ENVIRONMENT"
    )
    debug: bool = Field(default=False, validation_alias="DEBUG")
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    spool_dir: Path | None = Field(default=None, validation_alias="SPOOL_DIR")
    # the record `make deploy` writes; a worker that sees a new one swaps that model in
    deployment_file: Path | None = Field(default=None, validation_alias="DEPLOYMENT_FILE")
    # SIGTERM: seconds a worker keeps answering (readyz 503 "draining", `Connection: close`)
    # before it stops accepting and finishes what it accepted
    drain_s: float = Field(default=5.0, ge=0, le=300, validation_alias="SHUTDOWN_DRAIN_S")
    # Bounds a client cannot hold a worker past (serving/httpguard.py): the request line and
    # headers, the time to send them, the time to send the body
    max_head_bytes: int = Field(default=32 * 1024, ge=4096, validation_alias="MAX_HEADER_BYTES")
    head_timeout_s: float = Field(default=10.0, gt=0, le=600, validation_alias="HEADER_TIMEOUT_S")
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600, validation_alias="BODY_TIMEOUT_S")
    # What to do when no durable place can take prediction rows (journal disk full or
    # failing): refuse scoring with 503 (default: no answer that could not be audited), or
    # drop: answer anyway, rows only in memory, counted in riskloop_log_rows_dropped.
    log_on_failure: Literal["refuse", "drop"] = Field(
        default="refuse", validation_alias="PREDICTION_LOG_ON_FAILURE"
    )
    # every log line one JSON object with the request id (serving/requestlog.py), and one
    # line per request: off by default (a line per request costs CPU at thousands a second)
    log_format: Literal["text", "json"] = Field(default="text", validation_alias="LOG_FORMAT")
    access_log: bool = Field(default=False, validation_alias="ACCESS_LOG")
    enable_interventions: bool = Field(default=False, validation_alias="ENABLE_INTERVENTIONS")
    auto_trigger_threshold: int = Field(
        default=80, ge=0, le=100, validation_alias="AUTO_TRIGGER_THRESHOLD"
    )

    _split = field_validator("api_keys", "cors_origins", mode="before")(
        classmethod(lambda cls, v: _csv(v))
    )

    @property
    def production(self) -> bool:
        return self.environment == "production"

    def store_url(self) -> str:
        if self.database_url:
            return stores.normalize_db_url(self.database_url, "DATABASE_URL")
        return f"sqlite:///{stores.state_dir() / 'predictions.db'}"

    def spool_path(self) -> Path:
        return self.spool_dir or stores.state_dir() / "spool"

    def deployment_path(self) -> Path:
        return self.deployment_file or stores.deployment_file()

    def check_listening(self) -> None:
        """A worker: refuse to serve beyond loopback without API keys (`/outcomes` feeds
        retraining; it must not be open to the network)."""
        exposed = [a for _, a in listening_sockets() if not ipaddress.ip_address(a).is_loopback]
        if exposed and not self.api_keys:
            raise SettingsError(
                f"listening on {', '.join(sorted(set(exposed)))} without API_KEYS: set API_KEYS "
                "or serve on 127.0.0.1 only (HOST=127.0.0.1)"
            )

    def check(self) -> None:
        if self.production and self.debug:
            raise SettingsError("ENVIRONMENT=production with DEBUG on: refusing to start")
        if self.production and not self.api_keys:
            raise SettingsError(
                "ENVIRONMENT=production needs API_KEYS: refusing to start without auth"
            )


def load_env() -> ServingEnv:
    try:
        env = ServingEnv()
    except ValueError as exc:  # pydantic's ValidationError names the variable
        raise SettingsError(f"serving environment is invalid: {exc}") from exc
    env.check()
    return env


# The environment that lifts every rate limit: benchmarks and load tests, never production.
NO_RATE_LIMIT = {"RATE_LIMIT_MAX": "100000000", "RATE_LIMIT_ROWS": "100000000000",
                 "RATE_LIMIT_EXPLAINED_ROWS": "100000000000"}  # fmt: skip
