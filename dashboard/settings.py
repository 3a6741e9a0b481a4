"""The dashboard's environment, typed and checked before anything starts."""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from riskloop.errors import SettingsError
from serving.config import ServingEnv

DEFAULT_PORT = 8501


class DashboardEnv(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    api_base_url: str = Field(default="http://127.0.0.1:3000", validation_alias="API_BASE_URL")
    api_key: SecretStr | None = Field(default=None, validation_alias="API_KEY")
    api_timeout_s: float = Field(default=30.0, gt=0, le=600, validation_alias="API_TIMEOUT_S")
    # the prediction store, read-only: DASHBOARD_STORE_URL (e.g. a read replica or a role with
    # SELECT only), else the service's own DATABASE_URL / embedded SQLite file
    store_url_override: str | None = Field(default=None, validation_alias="DASHBOARD_STORE_URL")
    host: str = Field(default="127.0.0.1", validation_alias="DASHBOARD_HOST")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, validation_alias="DASHBOARD_PORT")
    # required beyond loopback: every page asks for it first
    password: SecretStr | None = Field(default=None, validation_alias="DASHBOARD_PASSWORD")
    # rows per /predict call when scoring an uploaded file (progress moves per chunk)
    upload_chunk_rows: int = Field(
        default=200, ge=1, le=10_000, validation_alias="UPLOAD_CHUNK_ROWS"
    )
    upload_max_rows: int = Field(default=100_000, ge=1, validation_alias="UPLOAD_MAX_ROWS")
    # where the MLflow UI runs (`make ui`), for links from the Models page; empty: no links
    mlflow_ui_url: str | None = Field(default=None, validation_alias="MLFLOW_UI_URL")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def store_url(self) -> str:
        return self.store_url_override or ServingEnv().store_url()

    def check(self) -> None:
        """Refuse to listen beyond loopback without a login."""
        if not self.loopback and not (self.password and self.password.get_secret_value()):
            raise SettingsError(
                f"DASHBOARD_HOST={self.host} is reachable beyond this machine: set "
                "DASHBOARD_PASSWORD (every page then asks for it), or listen on 127.0.0.1"
            )


def load_env() -> DashboardEnv:
    return DashboardEnv()
