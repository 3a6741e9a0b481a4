"""`make bench`: measure the experiment loop's quality bars in a clean copy of the repo.

- `dvc repro` wall time with the default params.yaml and an empty state (bar: < 8 min);
- test-split ROC AUC (bar: >= 0.790) beside the 5-fold CV AUC of the final configuration
  on train+valid, so a lucky split cannot pass the bar;
- with --fresh-clone: `make run` from `git clone` (install included; bar: < 15 min).
Writes bench/RESULTS.md with the command that produced it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.results import RESULTS, write_section

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def clean_copy(dst: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    shutil.copytree(ROOT / "data/raw", dst / "data/raw")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fresh-clone", action="store_true", help="also time `make run` from a clone")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        clean_copy(repo)
        env = {**os.environ, "RISKLOOP_STATE_DIR": str(Path(tmp) / "state"), "PYTHONWARNINGS": "ignore",
               "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}  # fmt: skip
        for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
            env.pop(var, None)
        repro_s = sh(["dvc", "repro"], repo, env)
        metrics = json.loads((repo / "metrics.json").read_text())
        trained = json.loads((repo / "reports/train.json").read_text())
        test, cv = metrics["test"], metrics["cv"]
        rows += [
            ("`dvc repro`, default params, empty state", f"{repro_s / 60:.1f} min", "< 8 min"),
            ("Optuna trials finished (pruned included)", str(trained["n_trials"]), "train.n_trials"),
            ("test ROC AUC (6,000 rows, read only by evaluate)", f"{test['roc_auc']:.4f}", ">= 0.790"),
            ("5-fold CV ROC AUC, final config, train+valid",
             f"{cv['roc_auc_mean']:.4f} ± {cv['roc_auc_std']:.4f}", "context"),
            ("test Gini / KS", f"{test['gini']:.4f} / {test['ks']:.4f}", ""),
            ("test Brier / ECE", f"{test['brier']:.4f} / {test['ece']:.4f}", ""),
        ]  # fmt: skip
        if args.fresh_clone:
            fresh = Path(tmp) / "fresh"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(fresh)], check=True)
            env2 = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV",)}
            env2["PATH"] = os.environ["PATH"]
            env2["RISKLOOP_STATE_DIR"] = str(fresh / "state")
            run_s = sh(["make", "run"], fresh, env2)
            rows.append(("`make run` from `git clone` (venv, install, data, repro, promote)",
                         f"{run_s / 60:.1f} min", "< 15 min"))  # fmt: skip
    cmd = "make bench" + (" BENCH_ARGS=--fresh-clone" if args.fresh_clone else "")
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    write_section(
        "experiment-loop",
        f"""## Experiment loop (issue 2)

Command: `{cmd}` (runs `python -m bench.quality`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,
{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}.

| measure | value | bar |
|---|---|---|
{table}

The test split is scored only by the evaluate stage; seeds, features and the search space
were chosen on train/valid and CV only. The CV figure is the guard against a lucky (or
unlucky) split: compare the two before reading anything into the test number.
""",
    )
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
