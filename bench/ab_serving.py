"""`make bench-ab BASE=<commit>`: single-row requests with top-3 reasons against this tree's
bento and an earlier commit's, both serving the current champion's booster and fitted
feature builder, alternated in one run (hey, 32 clients, 2 workers each, auth and SQLite
logging on), with the server's CPU per request read from /proc. Machines here vary by up to
~2x between runs: the ratio within one run is the figure. Needs `make run` first.

The earlier commit's bento is built in a git worktree from its own code and its own model
format: the champion's booster and clip caps are re-logged through that commit's
`CreditRiskModel` (riskloop's models before the package format carried no contract, golden
batch or reference). Writes the "serving-ab" section of bench/RESULTS.md."""

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
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from bench.results import write_section
from bench.serving import KEY, hey, server_cpu_s, start, stop
from riskloop import stores
from riskloop.package import ModelPackage
from riskloop.settings import load_params
from serving.config import NO_RATE_LIMIT

ROOT = Path(__file__).resolve().parents[1]

# Run inside the base commit's worktree (its code on sys.path): the champion's booster and
# fitted builder state re-logged as that commit's model, registered @champion, bento built.
_RELOG = """
import json, sys, mlflow, xgboost as xgb
from mlflow import MlflowClient
from features.transform import FeatureBuilder
from riskloop.settings import load_params
from training.model import CreditRiskModel
from training.tracking import connect
spec = json.load(open(sys.argv[1]))
params = load_params()
builder = FeatureBuilder(params.data, params.features)
builder.caps_ = {k: tuple(v) for k, v in spec["caps"].items()}
builder.feature_names_ = spec["feature_names"]
assert builder.input_columns == spec["inputs"], "the base commit orders the inputs differently"
booster = xgb.Booster()
booster.load_model(spec["booster"])
client, exp_id, registry = connect(params.registry)
with mlflow.start_run(experiment_id=exp_id):
    info = mlflow.pyfunc.log_model(name="model", python_model=CreditRiskModel(builder, booster),
                                   code_paths=["features", "training", "riskloop"])
mv = registry.register_challenger(info.model_uri, {"data_hash": "ab"})
registry.move_champion(mv.version, "A/B bench", None)
"""


def build_base(commit: str, pkg: ModelPackage, tmp: Path) -> dict[str, str]:
    """The base commit's bento of the champion's booster; returns the env that serves it."""
    tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), commit], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    model = pkg.load_pyfunc().unwrap_python_model()
    model.booster.save_model(str(tmp / "booster.json"))
    spec = {"caps": model.builder.caps_, "feature_names": model.builder.feature_names_,
            "inputs": model.builder.input_columns, "booster": str(tmp / "booster.json")}  # fmt: skip
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(tmp / "base-state"), "PYTHONPATH": str(tree),
           "BENTOML_HOME": str(tmp / "base-bentoml"), "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    cmds = [[sys.executable, "-c", _RELOG, str(tmp / "spec.json")]]
    if (tree / "riskloop" / "package.py").exists():
        # the base already reads riskloop's model package: it serves the champion as it is,
        # from a copy of the registry (its bento build records a deployment there; the
        # artifacts stay where the registry's absolute URIs point)
        (tmp / "base-state").mkdir()
        shutil.copy2(stores.state_dir() / "mlflow.db", tmp / "base-state" / "mlflow.db")
        cmds = []
    for cmd in [*cmds, [sys.executable, "-m", "pipelines.bento"]]:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(
                f"base commit {commit}: {' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}"
            )
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True, help="the earlier commit to compare with")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    params = load_params()
    mlflow.set_tracking_uri(stores.tracking_uri())
    pkg = ModelPackage.download(f"models:/{params.registry.model_name}@champion")
    body = json.dumps({"records": [pkg.example], "explain": "top"}).encode()
    base_commit = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, text=True,
                                 capture_output=True, check=True).stdout.strip()  # fmt: skip
    head_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                 capture_output=True, check=True).stdout.strip()  # fmt: skip
    common = {"API_KEYS": KEY, **NO_RATE_LIMIT, "SERVING_WORKERS": "2",
              "PYTHONWARNINGS": "ignore"}  # fmt: skip
    servers: dict[str, subprocess.Popen] = {}
    results: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            base_env = build_base(args.base, pkg, tmp)
            envs = {"head": {**os.environ, **common, "DATABASE_URL": f"sqlite:///{tmp / 'head.db'}"},
                    "base": {**base_env, **common, "DATABASE_URL": f"sqlite:///{tmp / 'base.db'}"}}  # fmt: skip
            for i, name in enumerate(("head", "base")):
                port = 3911 + i
                servers[name] = start([sys.executable, "-m", "bentoml", "serve", "riskloop:latest", "--port", str(port)],
                                      envs[name], f"http://127.0.0.1:{port}/readyz", tmp / f"{name}.log")  # fmt: skip
            urls = {
                name: f"http://127.0.0.1:{3911 + i}/predict"
                for i, name in enumerate(("head", "base"))
            }
            for name in servers:  # warm-up: caches, numba, the store's first pages
                hey(urls[name], body, 1000, 32, {"X-API-Key": KEY}, tmp)
            for _ in range(args.rounds):
                for name in ("base", "head"):
                    cpu0 = server_cpu_s(servers[name])
                    run = hey(urls[name], body, args.requests, 32, {"X-API-Key": KEY}, tmp)
                    run["cpu_us"] = (server_cpu_s(servers[name]) - cpu0) / args.requests * 1e6
                    results[name].append(run)
                    time.sleep(1)
        finally:
            for proc in servers.values():
                stop(proc)
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")], cwd=ROOT,
                           capture_output=True)  # fmt: skip

    med = {n: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p99", "cpu_us")}
           for n, runs in results.items()}  # fmt: skip
    errors = {n: sum(r["errors"] for r in runs) for n, runs in results.items()}

    def row(name: str, label: str) -> str:
        m, runs = med[name], results[name]
        rps = " / ".join(f"{r['rps']:,.0f}" for r in runs)
        cpu = " / ".join(f"{r['cpu_us']:.0f}" for r in runs)
        return (f"| {label} | **{m['rps']:,.0f}** ({rps}) | {m['p99']:.1f} | **{m['cpu_us']:.0f}** ({cpu}) | "
                f"{errors[name]} |")  # fmt: skip

    body_md = f"""## Serving A/B: this tree vs {base_commit}, single row with top-3 reasons

Command: `make bench-ab BASE={args.base}` (`python -m bench.ab_serving --base {args.base} --requests {args.requests}
--rounds {args.rounds}`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, HEAD {head_commit}. Both bentos serve the current
champion's booster and clip caps, 2 workers each, auth and SQLite logging on; `hey -c 32`, {args.requests:,}
requests a run, the two servers alternated run by run after a warm-up; CPU per request = the server's user +
system CPU over the run (both workers), from /proc.

| bento | req/s, median (runs) | p99 ms | server CPU µs / request, median (runs) | errors |
|---|---|---|---|---|
{row("base", f"{base_commit} (base)")}
{row("head", f"{head_commit} (this tree)")}

Ratio head / base: throughput **{med["head"]["rps"] / med["base"]["rps"]:.2f}x**, CPU per request
**{med["head"]["cpu_us"] / med["base"]["cpu_us"]:.2f}x** (`git log {base_commit}..{head_commit}` says what
changed between them).
"""
    write_section("serving-ab", body_md)
    print(body_md)


if __name__ == "__main__":
    main()
