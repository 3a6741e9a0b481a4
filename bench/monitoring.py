"""Monitoring job at scale: `make bench-monitoring` (after `make run`).

100k logged predictions (held-out and shifted rows, scored by the champion, half labelled) in
a throwaway SQLite prediction store, against a 30k-row reference (the whole dataset), timed
as the real `python -m pipelines.monitor` process end to end (start, store read, features,
Evidently reports, HTML/JSON, workspace). The same Evidently drift run on the same frames is
timed in process beside it, and Evidently's stock DataDriftPreset on its own as the peer."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import write_section
from monitoring.scenarios import apply, sample
from pipelines import paths
from riskloop import stores
from riskloop.settings import load_params
from serving.store import PredictionStore, insert_predictions, make_engine, prediction_row, upgrade

ROOT = Path(__file__).resolve().parent.parent


def fill_store(
    url: str, rows: pd.DataFrame, p: np.ndarray, labels: np.ndarray, columns: list[str]
) -> None:
    upgrade(url)
    engine = make_engine(url)
    start = datetime.now(UTC) - timedelta(hours=1)
    ids = [uuid.uuid4().hex for _ in range(len(rows))]
    records = rows[columns].to_dict("records")
    with engine.begin() as conn:
        for lo in range(0, len(rows), 5000):
            insert_predictions(conn, [prediction_row({
                "prediction_id": ids[i], "created_at": start + timedelta(milliseconds=i), "model_name": "credit-risk",
                "model_version": "bench", "inputs": records[i], "probability": float(p[i]),
                "risk_score": round(100 * p[i]), "risk_band": "-", "decision": "-", "reasons": None,
            }) for i in range(lo, min(lo + 5000, len(rows)))])  # fmt: skip
    half = [{"prediction_id": ids[i], "defaulted": int(labels[i])} for i in range(0, len(rows), 2)]
    PredictionStore(engine).record_outcomes(half)
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    params = load_params()
    data = params.data
    if not (paths.PREPARED / "test.parquet").exists():
        raise SystemExit("run `make run` first (needs the champion and data/prepared)")
    held_out = pd.read_parquet(paths.PREPARED / "test.parquet")
    half = args.rows // 2
    current = pd.concat([
        sample(held_out, half, 1),
        apply("recession", sample(held_out, args.rows - half, 2), 2, data, params.features),
    ], ignore_index=True)  # fmt: skip
    from pipelines.monitor import load_champion

    champion = load_champion(params)  # its model, contract and out-of-sample reference
    model, reference = champion.model, champion.reference
    p = model.predict_proba(current)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        work, state = tmp / "work", tmp / "state"
        work.mkdir()
        state.mkdir()
        shutil.copy(ROOT / "params.yaml", work)
        shutil.copy(stores.state_dir() / "mlflow.db", state / "mlflow.db")  # artifacts stay put
        url = f"sqlite:///{tmp / 'predictions.db'}"
        t = time.perf_counter()
        fill_store(url, current, p, current[data.target].to_numpy(), data.feature_columns)
        fill_s = time.perf_counter() - t
        env = {
            **os.environ,
            "RISKLOOP_STATE_DIR": str(state),
            "DATABASE_URL": url,
            "PYTHONPATH": str(ROOT),
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        walls, decisions = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pipelines.monitor", "--last", str(args.rows), "--no-act"],
                                  cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
            walls.append(time.perf_counter() - t)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            out = next(line for line in proc.stdout.splitlines() if line.startswith("json: "))
            decisions.append(json.loads((work / out.removeprefix("json: ")).read_text()))

        # In process: the same drift report on the same frames, and the stock preset alone.
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        from monitoring import records
        from monitoring import report as rep
        from monitoring.frames import build_frames

        engine = make_engine(url)
        t = time.perf_counter()
        window = records.load_window(engine, args.rows, None)
        load_s = time.perf_counter() - t
        engine.dispose()
        t = time.perf_counter()
        frames = build_frames(window, reference, model.builder, champion.contract,
                              params.serving.decisions,
                              params.monitoring.protected_min_rows)  # fmt: skip
        frames_s = time.perf_counter() - t
        ours, stock = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            rep.drift_report(frames, params.monitoring.drift_share, params.monitoring.psi.alert)
            ours.append(time.perf_counter() - t)
            dd = DataDefinition(numerical_columns=list(frames.columns))
            t = time.perf_counter()
            Report([DataDriftPreset(columns=list(frames.columns))]).run(
                Dataset.from_pandas(frames.current[list(frames.columns)], data_definition=dd),
                Dataset.from_pandas(frames.reference[list(frames.columns)], data_definition=dd),
            )
            stock.append(time.perf_counter() - t)

    med = statistics.median
    last = decisions[-1]
    body = f"""## Monitoring job: {args.rows:,} current rows vs the champion's {len(reference):,}-row reference

Command: `make bench-monitoring` (`python -m bench.monitoring --rows {args.rows} --repeat {args.repeat}`),
{datetime.now(UTC):%Y-%m-%d}, 2 shared cores. Current window: half held-out rows as they are, half under the
`recession` scenario, scored by the champion, half of them labelled; {len(frames.columns)} monitored columns.

| measure | median of {args.repeat} | runs (s) |
|---|---|---|
| **`python -m pipelines.monitor` end to end** (process start, store read, features, reports, HTML/JSON, workspace) | **{med(walls):.1f} s** | {", ".join(f"{w:.1f}" for w in walls)} |
| in process: our drift report (Evidently DriftedColumnsCount + ValueDrift per column, decile PSI of every column and the score, score stats) | {med(ours):.1f} s | {", ".join(f"{w:.1f}" for w in ours)} |
| in process: Evidently's stock `DataDriftPreset` alone on the same frames (peer) | {med(stock):.1f} s | {", ".join(f"{w:.1f}" for w in stock)} |
| in process: read the window from the store | {load_s:.1f} s | |
| in process: raw inputs -> monitored features | {frames_s:.1f} s | |
| (setup, not timed above) write {args.rows:,} predictions + {args.rows // 2:,} outcomes to SQLite | {fill_s:.1f} s | |

Bar: under 60 s end to end: **{"met" if med(walls) < 60 else "NOT met"}**. Decisions of the runs, in order:
{", ".join(f"`{d['status']}`" for d in decisions)} (one retrain per episode: the repeats fall in its cooldown;
drifted share {last["drift"]["drift_share"]:.0%}, realized AUC {last["realized"]["evidently_roc_auc"]:.4f} on
{last["window"]["labelled_rows"]:,} outcomes).
"""
    write_section("monitoring", body)
    print(body)


if __name__ == "__main__":
    main()
