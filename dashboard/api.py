"""The scoring API as the dashboard calls it: one thin client, every failure an `ApiError`
whose message a page shows as it is (never a traceback)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from dashboard.settings import DashboardEnv


class ApiError(Exception):
    """The API refused or could not be reached. `problems`: {field: message} from a 422."""

    def __init__(self, message: str, status: int | None = None,
                 problems: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.problems = status, problems or {}


def _problems(body: Any) -> dict[str, str]:
    """The service's 422 body ({"detail": [{field, message}]}) as {field: message}."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return {
            str(p.get("field", "")): str(p.get("message", ""))
            for p in detail
            if isinstance(p, dict)
        }
    return {}


@dataclass(frozen=True)
class Chunk:
    """One slice of an uploaded file: rows [start, stop), their answers or their problems."""

    start: int
    stop: int
    predictions: list[dict[str, Any]]
    problems: dict[int, str]  # row within the file -> why the service refused it


class Api:
    def __init__(self, env: DashboardEnv) -> None:
        headers = {"X-API-Key": env.api_key.get_secret_value()} if env.api_key else {}
        self.base = env.api_base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=env.api_timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(f"the scoring API at {self.base} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(
                f"the scoring API at {self.base} is unreachable ({type(exc).__name__})"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            problems = _problems(body) if response.status_code in (400, 422) else {}
            detail = body.get("detail") if isinstance(body, dict) else None
            text = "; ".join(f"{k}: {v}" for k, v in problems.items()) or (
                detail if isinstance(detail, str) else response.text[:300]
            )
            hint = " (check API_KEY)" if response.status_code in (401, 403) else ""
            raise ApiError(f"{method} {path} answered {response.status_code}: {text}{hint}",
                           response.status_code, problems)  # fmt: skip
        return body

    # ------------------------------------------------------------------ endpoints
    def contract(self) -> dict[str, Any]:
        return self._call("GET", "/contract")

    def readiness(self) -> dict[str, Any]:
        """/readyz's body, ready or not (503 still says why)."""
        try:
            response = self.client.get("/readyz")
        except httpx.HTTPError as exc:
            return {"status": "unreachable", "detail": f"{self.base}: {type(exc).__name__}"}
        try:
            return response.json()
        except ValueError:
            return {"status": f"HTTP {response.status_code}", "detail": response.text[:300]}

    def metrics_text(self) -> str:
        try:
            response = self.client.get("/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ApiError(f"{self.base}/metrics: {type(exc).__name__}") from None
        return response.text

    def predict(
        self, records: Sequence[dict[str, Any]], explain: str = "all"
    ) -> list[dict[str, Any]]:
        body = self._call("POST", "/predict", json={"records": list(records), "explain": explain})
        return body["predictions"]

    def predict_customer(self, customer_id: str) -> dict[str, Any]:
        body = self._call(
            "POST", "/predict_customer", json={"customer_ids": [customer_id], "explain": "all"}
        )
        return body["predictions"][0]

    def record_outcome(self, customer_id: str, defaulted: int) -> dict[str, Any]:
        body = self._call(
            "POST",
            "/outcomes",
            json={"outcomes": [{"customer_id": customer_id, "defaulted": defaulted}]},
        )
        return body["results"][0]

    def record_intervention(
        self, customer_id: str, action: str, note: str | None
    ) -> dict[str, Any]:
        payload = {"customer_id": customer_id, "action": action, **({"note": note} if note else {})}
        return self._call("POST", "/interventions", json=payload)["intervention"]

    def score_file(self, records: Sequence[dict[str, Any]], chunk_rows: int) -> Iterator[Chunk]:
        """Score records chunk by chunk. A chunk the service refuses (422) is retried without
        the rows it named, so one bad row costs only itself."""
        for start in range(0, len(records), chunk_rows):
            yield self._score_chunk(records, start, min(start + chunk_rows, len(records)))

    def _score_chunk(self, records: Sequence[dict[str, Any]], start: int, stop: int) -> Chunk:
        rows = list(range(start, stop))
        problems: dict[int, str] = {}
        while rows:
            try:
                answers = self.predict([records[i] for i in rows], explain="top")
            except ApiError as exc:
                named = _rows_named(exc.problems, rows)
                if exc.status not in (400, 422) or not named:
                    raise
                problems.update(named)
                rows = [i for i in rows if i not in named]
                continue
            return Chunk(
                start, stop, [dict(a, row=i) for i, a in zip(rows, answers, strict=True)], problems
            )
        return Chunk(start, stop, [], problems)


def _rows_named(problems: dict[str, str], rows: list[int]) -> dict[int, str]:
    """{file row: "FIELD: message; …"} from a 422 naming `records.<position>.<FIELD>`."""
    out: dict[int, list[str]] = {}
    for field, message in problems.items():
        parts = field.split(".")
        if (
            len(parts) >= 2
            and parts[0] == "records"
            and parts[1].isdigit()
            and int(parts[1]) < len(rows)
        ):
            out.setdefault(rows[int(parts[1])], []).append(
                f"{'.'.join(parts[2:]) or 'record'}: {message}"
            )
    return {row: "; ".join(msgs) for row, msgs in out.items()}
