"""`make traffic SCENARIO=stable|recession|new_segment`: replay held-out rows against the
running service over HTTP at a chosen rate, then feed their realized labels to /outcomes after
a delay, as a lender's collections system would.

Held-out rows come from the test split, the only rows the champion never fitted (the final
model is refit on train+valid), so realized performance is honest. Each record carries its
row id as customer_id: when a retrain trains on this traffic, evaluation and promotion leave
those customers out of the test split (pipelines/lineage.py), so nothing leaks.

The ledger (state/traffic/<run>.jsonl: prediction id, label) lets `--outcomes-from` post the
labels later, from another process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from monitoring.scenarios import SCENARIOS, apply, sample
from pipelines import paths
from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import RiskloopError
from riskloop.settings import Params, load_params
from serving.config import ServingEnv

log = logging.getLogger("traffic")


class TrafficError(RiskloopError):
    """The service refused or could not be reached."""


def _client(url: str, api_key: str | None) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        resp = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise TrafficError(f"{client.base_url}{path}: {exc}") from exc
    if resp.status_code >= 400:
        raise TrafficError(
            f"{client.base_url}{path} answered {resp.status_code}: {resp.text[:500]}"
        )
    return resp.json()


def requests_of(
    rows: pd.DataFrame, params: Params, batch: int, customers: bool, protected: bool = True
) -> list[list[dict]]:
    """Request bodies' record lists: contract columns only (without the protected attributes
    unless `protected`), plus customer_id when asked."""
    data = params.data
    cols = [c for c in data.feature_columns if protected or c not in data.protected_columns]
    frame = rows[cols].astype(object)
    records = frame.where(rows[cols].notna(), None).to_dict("records")  # missing: null, not NaN
    if customers:
        for rec, cid in zip(records, rows[data.id_column], strict=True):
            rec["customer_id"] = str(cid)
    return [records[i : i + batch] for i in range(0, len(records), batch)]


def send(client: httpx.Client, batches: list[list[dict]], labels: list[int], rate: float,
         ledger: Path) -> list[dict[str, Any]]:  # fmt: skip
    """POST /predict batch by batch, paced to `rate` rows/s; every prediction id with its
    label goes to the ledger as it is answered."""
    out: list[dict[str, Any]] = []
    start, sent = time.monotonic(), 0
    with ledger.open("a") as fh:
        for records in batches:
            body = _post(client, "/predict", {"records": records, "explain": "none"})
            for pred in body["predictions"]:
                item = {"prediction_id": pred["prediction_id"], "defaulted": int(labels[len(out)]),
                        "risk_score": pred["risk_score"]}  # fmt: skip
                out.append(item)
                fh.write(json.dumps(item) + "\n")
            sent += len(records)
            ahead = sent / rate - (time.monotonic() - start) if rate > 0 else 0
            if ahead > 0:
                time.sleep(ahead)
    return out


def feed_outcomes(client: httpx.Client, items: list[dict[str, Any]], batch: int = 1000,
                  retries: int = 10) -> dict[str, int]:  # fmt: skip
    """POST the labels; a prediction the service has not flushed to the store yet answers
    unknown_prediction, so those are retried for a while (the log writer batches)."""
    counts: dict[str, int] = {}
    pending = [{"prediction_id": it["prediction_id"], "defaulted": it["defaulted"]} for it in items]
    for attempt in range(retries + 1):
        unknown = []
        for i in range(0, len(pending), batch):
            chunk = pending[i : i + batch]
            for item, res in zip(
                chunk, _post(client, "/outcomes", {"outcomes": chunk})["results"], strict=True
            ):
                if res["status"] == "unknown_prediction" and attempt < retries:
                    unknown.append(item)
                else:
                    counts[res["status"]] = counts.get(res["status"], 0) + 1
        if not unknown:
            break
        pending = unknown
        time.sleep(1.0)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", choices=SCENARIOS, default="stable")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument(
        "--rate", type=float, default=1000.0, help="rows per second (0: as fast as possible)"
    )
    ap.add_argument("--batch", type=int, default=50, help="records per request")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--source", choices=("test", "valid"), default="test",
                    help="split to replay (valid rows are in-sample for the refit champion)")  # fmt: skip
    ap.add_argument("--url", default=os.environ.get("SERVICE_URL", "http://127.0.0.1:3000"))
    ap.add_argument("--outcomes-delay", type=float, default=1.0,
                    help="seconds before the labels are posted (negative: do not post)")  # fmt: skip
    ap.add_argument(
        "--outcomes-share", type=float, default=1.0, help="share of predictions labelled"
    )
    ap.add_argument("--customers", action=argparse.BooleanOptionalAction, default=True,
                    help="send the row id as customer_id (the retrain's leakage guard needs it)")  # fmt: skip
    ap.add_argument("--protected", action=argparse.BooleanOptionalAction, default=True,
                    help="send the protected attributes (--no-protected: an application that "
                         "does not collect them)")  # fmt: skip
    ap.add_argument("--outcomes-from", type=Path, help="only post the labels of a ledger")
    args = ap.parse_args()
    if args.rows < 1 or args.batch < 1 or not 0 <= args.outcomes_share <= 1:
        raise TrafficError("--rows and --batch must be >= 1 and --outcomes-share within [0, 1]")
    key = os.environ.get("API_KEY") or next(iter(ServingEnv().api_keys), None)
    client = _client(args.url, key)
    if args.outcomes_from:
        items = [json.loads(line) for line in args.outcomes_from.read_text().splitlines() if line]
        print(f"outcomes: {feed_outcomes(client, items)}")
        return
    params = load_params()
    held_out = paths.PREPARED / f"{args.source}.parquet"
    if not held_out.exists():
        raise TrafficError(f"{held_out} not found: run `dvc repro` first")
    rows = sample(pd.read_parquet(held_out), args.rows, args.seed)
    shifted = apply(args.scenario, rows, args.seed, params.data, params.features)
    ledger_dir = stores.state_dir() / "traffic"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    ledger = ledger_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{args.scenario}.jsonl"
    labels = shifted[params.data.target].astype(int).tolist()  # a scenario may redraw rows
    t0 = time.monotonic()
    items = send(
        client,
        requests_of(shifted, params, args.batch, args.customers, args.protected),
        labels,
        args.rate,
        ledger,
    )
    took = time.monotonic() - t0
    mean_score = sum(i["risk_score"] for i in items) / len(items)
    print(f"{args.scenario}: {len(items)} predictions in {took:.1f} s ({len(items) / took:.0f} rows/s), "
          f"mean risk_score {mean_score:.1f}; ledger {ledger}")  # fmt: skip
    if args.outcomes_delay >= 0:
        time.sleep(args.outcomes_delay)
        keep = sample(pd.DataFrame(items), round(len(items) * args.outcomes_share), args.seed) \
            if args.outcomes_share < 1 else pd.DataFrame(items)  # fmt: skip
        print(f"outcomes: {feed_outcomes(client, keep.to_dict('records'))}")


if __name__ == "__main__":
    run_main(main)
