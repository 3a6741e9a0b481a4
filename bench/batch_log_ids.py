"""score-batch --log into SQLite: the cost of the prediction ids' order (issue 17). The same
batch-logged rows (one run, one created_at, ~1 KB of inputs a row, 10,000-row transactions as
pipelines.batch_log writes them) go into a fresh store at the current schema twice: with ids
hashed whole (sha1 of token and row, as score-batch made them before 74edee6) and with the ids
it makes now (run, partition, row, then the hash). Each variant runs --repeat times,
alternating; the table gives each one's median and the ratio.

    python -m bench.batch_log_ids --rows 2000000   # -> bench/RESULTS.md (section batch-log)
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.results import write_section
from pipelines import batch_log
from serving import store
from serving.logbatch import PredictionColumns

STEP = 250_000  # rows a PredictionColumns (score-batch logs a chunk at a time)


def hashed_ids(token: str, part: int, first_row: int, rows: int) -> list[str]:
    return [hashlib.sha1(f"{token}:{part}:{r}".encode()).hexdigest()[:32]
            for r in range(first_row, first_row + rows)]  # fmt: skip


def insert(url: str, rows: int, ids) -> float:
    """Seconds to log `rows` batch rows with `ids(token, part, first_row, rows)`."""
    inputs = orjson.dumps({f"X{i}": 123456.0 + i for i in range(34)}).decode()
    reasons = orjson.dumps([{"feature": "PAY_0", "text": "recent delinquency"}] * 3).decode()
    log = batch_log.BatchLog(url, "m", "1", token="run")
    t0 = time.perf_counter()
    for start in range(0, rows, STEP):
        n = min(STEP, rows - start)
        cols = PredictionColumns(
            created_at=log.created_at, model_name="m", model_version="1",
            prediction_id=ids(log.token, 0, start, n), request_id=[log.token] * n,
            customer_id=[str(start + i) for i in range(n)], inputs=[inputs] * n,
            probability=[0.2] * n, risk_score=[40] * n, risk_band=["medium"] * n,
            decision=["review"] * n, reasons=[reasons] * n,
        )  # fmt: skip
        batch_log.write(log, cols)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    variants = {
        "hashed whole (before)": hashed_ids,
        "rising with the rows (now)": batch_log.prediction_ids,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for name, ids in variants.items():
                db = Path(tmp) / f"{rep}-{len(times[name])}-{name[:6]}.db"
                url = f"sqlite:///{db}"
                store.upgrade(url)
                times[name].append(insert(url, args.rows, ids))
                db.unlink()
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    before, now = med.values()
    lines = [
        f"## score-batch --log into SQLite: {args.rows:,} rows, hashed vs ordered prediction ids (issue 17)",
        "",
        f"Command: `python -m bench.batch_log_ids --rows {args.rows} --repeat {args.repeat}`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. One run's rows under one created_at "
        "(as score-batch logs them), ~1 KB of inputs a row, 10,000-row transactions, a fresh "
        "store at the current schema (its (created_at, prediction_id) index included) each time.",
        "",
        "| ids | median s | runs s | rows/s |",
        "|---|---|---|---|",
        *[f"| {k} | {med[k]:.1f} | {', '.join(f'{t:.1f}' for t in v)} | {args.rows / med[k]:,.0f} |"
          for k, v in times.items()],
        "",
        f"Ordered ids log the batch {before / now:.1f}x faster: both of the store's indexes on the "
        "id take a run's rows in order instead of at random places.",
    ]  # fmt: skip
    write_section("batch-log", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
