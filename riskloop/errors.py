"""Errors a user can act on: printed as one clear message, never as a traceback."""

import math
from datetime import datetime


class RiskloopError(Exception):
    """Base class: the message names what is wrong and, where possible, how to fix it."""


class SettingsError(RiskloopError):
    """params.yaml or the environment is invalid."""


class DataContractError(RiskloopError):
    """Raw data violates the contract declared in params.yaml."""


class DataVersionError(RiskloopError):
    """The data on disk is not the version pinned by data.dvc."""


class RegistryError(RiskloopError):
    """The model registry is not in the state an operation needs."""


class PromotionRefused(RiskloopError):
    """A promotion gate failed; the message names the gate."""


class MonitoringError(RiskloopError):
    """The monitoring job cannot take a decision (no reference, dead store, bad logged data)."""


class LockHeld(RiskloopError):
    """Another run holds a job's lock: the message names the holder and since when."""

    def __init__(self, name: str, holder: str, since: datetime) -> None:
        self.name, self.holder, self.since = name, holder, since
        super().__init__(f"another {name} run holds the lock "
                         f"(holder {holder}, since {since.isoformat(timespec='seconds')})")  # fmt: skip


class Refused(RiskloopError):
    """A request the service declines now: answered with `status` and Retry-After."""

    status = 503
    retry_after_s = 1


class ServiceUnavailable(Refused):
    """The service cannot answer this request safely now (503 with Retry-After)."""


class RateLimited(Refused):
    """A key's requests or work in this window are spent (429 with Retry-After)."""

    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))
