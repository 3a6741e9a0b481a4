"""`make bench-serving`: the bento against `mlflow models serve` of the same registered
champion, and raw in-process XGBoost as the ceiling, in one run with the same payloads.
Load from `hey` (Debian package) at 32 concurrent clients. Needs `make run` first.
Writes the "serving" section of bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa

from bench.results import write_section
from riskloop.settings import load_params
from riskloop.stores import tracking_uri
from serving.arrowio import CONTENT_TYPE as ARROW
from serving.arrowio import stream_bytes
from serving.config import NO_RATE_LIMIT

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def start(cmd: list[str], env: dict, ready_url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(log.read_text()[-2000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def rss_mb(proc: subprocess.Popen) -> float:
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def hey(url: str, body: bytes, n: int, c: int, headers: dict[str, str], tmp: Path,
        timeout_s: int = 20, content_type: str = "application/json", keepalive: bool = True) -> dict:  # fmt: skip
    payload = tmp / "body.json"
    payload.write_bytes(body)
    cmd = [
        "hey",
        "-n",
        str(n),
        "-c",
        str(c),
        "-m",
        "POST",
        "-T",
        content_type,
        "-D",
        str(payload),
        "-t",
        str(timeout_s),
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if not keepalive:
        cmd.append("-disable-keepalive")
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {
        int(m.group(1)): float(m.group(2)) * 1000
        for m in re.finditer(r"(\d+)%+ in ([\d.]+) secs", out)
    }
    codes = {
        int(m.group(1)): int(m.group(2)) for m in re.finditer(r"\[(\d{3})\]\s+(\d+) responses", out)
    }
    ok = codes.get(200, 0)
    failed = sum(v for k, v in codes.items() if k != 200)
    transport = re.search(r"Error distribution:(.*)", out, re.S)
    if transport:  # connection errors and timeouts are not in the status histogram
        failed += sum(int(n) for n in re.findall(r"\[(\d+)\]", transport.group(1)))
    # hey's Requests/sec counts failures too: report successful requests per second
    good_rps = rps * ok / max(ok + failed, 1)
    return {"rps": good_rps, "p50": pct.get(50), "p99": pct.get(99), "errors": failed, "codes": codes,
            "tail": out[-800:]}  # fmt: skip


def median_run(runs: list[dict], extra: list[dict] = ()) -> dict:
    """Median req/s, p50 and p99 over `runs` (each taken separately); errors and responses of
    every run, `extra` (warm-up) included, so the store check counts all answered rows."""
    med = lambda key: float(np.median([r[key] for r in runs]))  # noqa: E731
    codes: dict[int, int] = {}
    for r in [*runs, *extra]:
        for code, n in r["codes"].items():
            codes[code] = codes.get(code, 0) + n
    return {"rps": med("rps"), "p50": med("p50"), "p99": med("p99"), "codes": codes,
            "errors": sum(r["errors"] for r in [*runs, *extra]),
            "runs": [round(r["rps"]) for r in runs], "tail": runs[-1]["tail"]}  # fmt: skip


def wait_for_rows(db: Path, expected: int, timeout_s: float = 600) -> dict:
    """Seconds from now until the prediction store holds `expected` rows (the bento's
    answered predictions), and how many it holds then."""
    import sqlite3

    start = time.monotonic()
    count = 0
    while time.monotonic() - start < timeout_s:
        with sqlite3.connect(db) as conn:
            count = conn.execute("select count(*) from predictions").fetchone()[0]
        if count >= expected:
            break
        time.sleep(0.5)
    return {"expected": expected, "stored": count, "seconds": time.monotonic() - start}


def raw_ceiling(pkg, rows: pd.DataFrame) -> dict[str, float]:
    """In-process, 1 thread, the service's own array path (features included), with the
    service's scorer (flattened trees where its golden-batch checks pass) and with XGBoost
    alone: µs for one row without and with exact contributions, rows/s for 10k-row batches
    without them, and µs per row with them in 64-row batches (what the service's
    micro-batches pay)."""
    from serving.golden import golden_features
    from serving.scorer import Scorer

    model = pkg.load_pyfunc().unwrap_python_model()
    model.booster.set_param({"nthread": 1})
    coded = model.contract.coded(rows).to_numpy(dtype="float64")
    one, big = coded[:1], np.concatenate([coded] * (10_000 // len(coded) + 1))[:10_000]
    gold = golden_features(pkg.golden)
    ours = Scorer(model.booster, gold, pkg.golden)
    xgb_only = Scorer(model.booster, gold, pkg.golden, use_table=False)

    def score(scorer: Scorer, values: np.ndarray, explain: bool = False) -> np.ndarray:
        feats = model.builder.transform_array(values)
        p = scorer.explain(feats)[1] if explain else None
        return scorer.probabilities(feats) if p is None else p

    def per_call(fn, n: int) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    return {
        "single_us": per_call(lambda: score(ours, one), 500) * 1e6,
        "single_xgb_us": per_call(lambda: score(xgb_only, one), 500) * 1e6,
        "explain_us": per_call(lambda: score(ours, one, True), 200) * 1e6,
        "explain_xgb_us": per_call(lambda: score(xgb_only, one, True), 200) * 1e6,
        "batch_rps": 10_000 / per_call(lambda: score(ours, big), 5),
        "batch_explain_us": per_call(lambda: score(ours, big[:64], True), 20) / 64 * 1e6,
        "batch_explain_xgb_us": per_call(lambda: score(xgb_only, big[:64], True), 10) / 64 * 1e6,
    }


MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"


def server_cpu_s(proc: subprocess.Popen) -> float:
    """User + system CPU seconds of a server and all its workers so far."""
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def v2_body(recs: list[dict], cols: list[str]) -> bytes:
    """The rows as an Open Inference Protocol (V2) request, one tensor per column, decoded by
    MLServer's pandas codec into the DataFrame the MLflow model takes."""
    inputs = [{"name": c, "shape": [len(recs)],
               "datatype": "FP64" if any(isinstance(r[c], float) for r in recs) else "INT64",
               "data": [r[c] for r in recs]} for c in cols]  # fmt: skip
    return json.dumps({"inputs": inputs, "parameters": {"content_type": "pd"}}).encode()


def mlserver_peer(
    model_uri: str, recs: list[dict], cols: list[str], requests: int, tmp: Path
) -> dict:
    """Seldon MLServer (+ mlserver-mlflow) serving the same MLflow model, in its own venv
    (`make bench-serving` builds .venv-mlserver from bench/mlserver-requirements.txt: it wants
    fastapi < 0.116). Its best settings here: single rows with adaptive batching and 2
    parallel workers of one XGBoost thread each; 10k-row requests with parallel_workers=0.
    No prediction logging at all."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    model_dir = Path(
        mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "mls-model"))
    )
    out = {}
    for key, workers, body, n, clients in (
        ("mlserver-1", 2, v2_body(recs[:1], cols), requests, 32),
        ("mlserver-10k", 0, v2_body(recs, cols), 24, 2),
    ):
        home = tmp / f"mls-{workers}"
        (home / "credit-risk").mkdir(parents=True)
        (home / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": 3903,
                    "grpc_port": 3904,
                    "metrics_port": 3905,
                    "parallel_workers": workers,
                }
            )
        )
        (home / "credit-risk" / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "credit-risk",
                    "implementation": "mlserver_mlflow.MLflowRuntime",
                    "max_batch_size": 32,
                    "max_batch_time": 0.002,
                    "parameters": {"uri": str(model_dir)},
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # riskloop's pyfunc
        proc = start(
            [str(MLSERVER), "start", str(home)],
            env,
            "http://127.0.0.1:3903/v2/models/credit-risk/ready",
            home / "mlserver.log",
        )
        try:
            url = "http://127.0.0.1:3903/v2/models/credit-risk/infer"
            if n > 100:
                hey(url, body, 500, clients, {}, tmp)  # warm-up
            cpu = server_cpu_s(proc)
            out[key] = hey(url, body, n, clients, {}, tmp, 300, keepalive=n > 100)
            out[key]["cpu_ms"] = (server_cpu_s(proc) - cpu) * 1000 / n
            out[key]["rss"] = rss_mb(proc)
        finally:
            stop(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=6000, help="single-row requests per run")
    # 2 workers on 2 cores: each worker's event loop parses while its scoring thread runs
    # XGBoost (GIL released); 1 worker leaves ~30% of single-row throughput on the table
    ap.add_argument("--workers", type=int, default=int(os.environ.get("SERVING_WORKERS", "2")))
    ap.add_argument("--repeat", type=int, default=3, help="single-row runs per payload (medians)")
    args = ap.parse_args()
    if not shutil.which("hey"):
        sys.exit("bench needs `hey`: apt-get install -y hey")
    params = load_params()
    test = pd.read_parquet(ROOT / "data/prepared/test.parquet")
    # as a client writes them: whole numbers as JSON integers (the prepared frame holds
    # integer columns with gaps, the protected ones, as floats; a client sending 46.0 for an
    # integer field is answered too, by the pydantic route, at about half the speed)
    recs = [{k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in r.items()}
            for r in test[params.data.feature_columns].astype(object).to_dict(orient="records")]  # fmt: skip
    recs = (recs * (10_000 // len(recs) + 1))[:10_000]
    cols = params.data.model_input_columns
    env = {**os.environ, "API_KEYS": KEY, **NO_RATE_LIMIT, "SERVING_WORKERS": str(args.workers),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'predictions.db'}"
        bento = start([sys.executable, "-m", "bentoml", "serve", "riskloop:latest", "--port", "3901"], env,
                      "http://127.0.0.1:3901/readyz", tmp / "bento.log")  # fmt: skip
        mlf = start([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                     f"models:/{params.registry.model_name}@{params.registry.champion_alias}",
                     "--env-manager", "local", "-p", "3902", "-h", "127.0.0.1"],
                    {**env, "MLFLOW_TRACKING_URI": tracking_uri()}, "http://127.0.0.1:3902/ping",
                    tmp / "mlflow.log")  # fmt: skip
        try:
            for explain in ("top", "none"):
                body = json.dumps({"records": recs[:1], "explain": explain}).encode()
                url, auth = "http://127.0.0.1:3901/predict", {"X-API-Key": KEY}
                # a warm-up run fills caches; its rows are stored too, so it counts for the log
                warmup = hey(url, body, 1000, 32, auth, tmp)
                runs = [hey(url, body, args.requests, 32, auth, tmp) for _ in range(args.repeat)]
                results[f"bento-1-{explain}"] = median_run(runs, extra=[warmup])
            mbody = json.dumps(
                {"dataframe_split": {"columns": cols, "data": [[recs[0][c] for c in cols]]}}
            ).encode()
            results["mlflow-1"] = hey("http://127.0.0.1:3902/invocations", mbody, max(args.requests // 4, 500), 32,
                                      {}, tmp)  # fmt: skip
            for explain in ("none", "top"):
                body = json.dumps({"records": recs, "explain": explain}).encode()
                # a 10k-row request with exact contributions (~50-150 µs a row) can take
                # longer than hey's default 20 s timeout on a busy machine
                results[f"bento-10k-{explain}"] = hey("http://127.0.0.1:3901/predict", body, 24, 2,
                                                      {"X-API-Key": KEY}, tmp, 300, keepalive=False)  # fmt: skip
            # the 10k records as an Arrow IPC stream (serving/arrowio.py), integers as int64
            arrow = stream_bytes(
                pa.Table.from_pandas(pd.DataFrame(recs).infer_objects(), preserve_index=False)
            )
            for explain in ("none", "top"):
                cpu = server_cpu_s(bento)
                results[f"bento-10k-arrow-{explain}"] = hey(
                    f"http://127.0.0.1:3901/predict?explain={explain}", arrow, 24, 2, {"X-API-Key": KEY},
                    tmp, 300, ARROW, keepalive=False)  # fmt: skip
                results[f"bento-10k-arrow-{explain}"]["cpu_ms"] = (
                    (server_cpu_s(bento) - cpu) * 1000 / 24
                )
            # the same with the 2 connections kept alive: where they land decides (see RESULTS)
            results["bento-10k-arrow-none-keepalive"] = hey(
                "http://127.0.0.1:3901/predict?explain=none", arrow, 24, 2, {"X-API-Key": KEY}, tmp, 300, ARROW)  # fmt: skip
            mbody = json.dumps(
                {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in recs]}}
            )
            results["mlflow-10k"] = hey(
                "http://127.0.0.1:3902/invocations", mbody.encode(), 24, 2, {}, tmp, keepalive=False
            )
            rss = {"bento": rss_mb(bento), "mlflow": rss_mb(mlf)}
            # Logging is asynchronous: how long until every answered prediction is in the store?
            answered = sum(r["codes"].get(200, 0) * (10_000 if "10k" in k else 1)
                           for k, r in results.items() if k.startswith("bento"))  # fmt: skip
            drain = wait_for_rows(tmp / "predictions.db", answered)
        finally:
            stop(bento)
            stop(mlf)
        if MLSERVER.exists():  # alone on the machine, as the bento and mlflow were
            results.update(mlserver_peer(
                f"models:/{params.registry.model_name}@{params.registry.champion_alias}",
                recs, cols, args.requests, tmp))  # fmt: skip
    import mlflow

    from riskloop.package import ModelPackage

    mlflow.set_tracking_uri(tracking_uri())
    raw = raw_ceiling(ModelPackage.download(f"models:/{params.registry.model_name}@champion"), test)

    def line(name: str, key: str, rows_per_req: int, goal: str, mem: str = "") -> str:
        r = results[key]
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        return (f"| {name} | {r['rps']:.0f} | {r['rps'] * rows_per_req:,.0f} | {fmt(r['p50'])} | "
                f"{fmt(r['p99'])} | {r['errors']} | {mem} | {goal} |")  # fmt: skip

    rows = [
        line(
            "bento, 1 row, reasons (top-3)",
            "bento-1-top",
            1,
            "≥ 2,000 req/s, p99 ≤ 30 ms",
            f"{rss['bento']:.0f}",
        ),
        line("bento, 1 row, no reasons", "bento-1-none", 1, ""),
        line("`mlflow models serve`, 1 row", "mlflow-1", 1, "peer", f"{rss['mlflow']:.0f}"),
        line("bento, 10k rows, Arrow, no reasons", "bento-10k-arrow-none", 10_000, "≥ 150k rows/s"),
        line(
            "bento, 10k rows, Arrow, no reasons, 2 kept-alive conns",
            "bento-10k-arrow-none-keepalive",
            10_000,
            "",
        ),
        line("bento, 10k rows, Arrow, reasons (top-3)", "bento-10k-arrow-top", 10_000, ""),
        line("bento, 10k rows, JSON, no reasons", "bento-10k-none", 10_000, ""),
        line("bento, 10k rows, JSON, reasons (top-3)", "bento-10k-top", 10_000, ""),
        line("`mlflow models serve`, 10k rows", "mlflow-10k", 10_000, "peer"),
    ]
    peer = ""
    if "mlserver-1" in results:
        rows += [line("Seldon MLServer, 1 row (adaptive batching, 2 workers), no logging", "mlserver-1", 1,
                      "peer", f"{results['mlserver-1']['rss']:.0f}"),
                 line("Seldon MLServer, 10k rows (parallel_workers=0), no logging", "mlserver-10k", 10_000, "peer")]  # fmt: skip
        r1, r10 = results["mlserver-1"], results["mlserver-10k"]
        a10 = results["bento-10k-arrow-none"]
        peer = (f"Against Seldon MLServer (same MLflow model, its best settings, no prediction logging at all): "
                f"single row with reasons and durable logging **{results['bento-1-top']['rps'] / r1['rps']:.1f}x** "
                f"(goal ≥ 5x); 10k-row Arrow with durable logging **{a10['rps'] * 10_000:,.0f}** rows/s, "
                f"**{a10['rps'] / r10['rps']:.2f}x** MLServer (goal ≥ 150k rows/s and ≥ 1.5x); server CPU per 10k-row "
                f"request {a10['cpu_ms']:.0f} ms vs MLServer's {r10['cpu_ms']:.0f} ms.")  # fmt: skip
    (ROOT / "bench/out").mkdir(exist_ok=True)
    (ROOT / "bench/out/serving.json").write_text(json.dumps({**results, "log": drain}, indent=1))
    b1, m1 = results["bento-1-top"]["rps"], results["mlflow-1"]["rps"]
    write_section(
        "serving",
        f"""## Serving

Command: `make bench-serving` (`python -m bench.serving --requests {args.requests} --workers {args.workers} --repeat {args.repeat}`),
{time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC, {platform.machine()}, {os.cpu_count()} cores; `hey` and both
servers share the machine. Same champion, same payloads; auth and prediction logging on for the bento
(SQLite store). 32 concurrent clients for single rows (kept-alive connections); 2 for 10k-row
requests, each on a new connection, as a batch job without a session sends them, unless the line
says otherwise. The bento's workers share one listening socket: the kernel wakes one waiting
worker and asyncio accepts every pending connection at once, so a few kept-alive connections
opened together often all land on one worker, which then serves alone. Single rows: after
1,000 warm-up requests, the median of {args.repeat} runs of {args.requests} requests (req/s of each run:
reasons {results["bento-1-top"]["runs"]}, no reasons {results["bento-1-none"]["runs"]}); non-200 counts every run.

| server / payload | req/s | rows/s | p50 ms | p99 ms | non-200 | RSS MB | goal |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Ratio bento / `mlflow models serve`, single row with reasons: **{b1 / m1:.1f}x**. {peer}
Prediction log: {drain["stored"]:,} of {drain["expected"]:,} answered predictions in the store,
{drain["seconds"]:.1f} s after the last request (rows are written in batches off the request path).
Raw in-process ceiling (the service's array path, features included, 1 thread): one row
{raw["single_us"]:.0f} µs (flattened trees, serving/scorer.py) vs {raw["single_xgb_us"]:.0f} µs (`inplace_predict`);
{raw["batch_rps"]:,.0f} rows/s on 10k-row batches (XGBoost's predictor). Exact contributions (reasons), riskloop's table
TreeSHAP (serving/treeshap.py) vs XGBoost's `pred_contribs`, same values:
{raw["explain_us"]:.0f} vs {raw["explain_xgb_us"]:.0f} µs for one row (prediction included);
{raw["batch_explain_us"]:.0f} vs {raw["batch_explain_xgb_us"]:.0f} µs a row in 64-row batches
(**{raw["batch_explain_xgb_us"] / raw["batch_explain_us"]:.1f}x**).
""",
    )


if __name__ == "__main__":
    main()
