"""Optuna trials (issue 17): distributed trials (each trial trained by a 2-worker Dask
LocalCluster, xgboost.dask on a DaskQuantileDMatrix, training.distributed.tuning_score) vs
parallel trials (2 processes, each training XGBoost in-process with nthread 1, joined through
Optuna's shared storage as `make tune-worker` joins a study) vs the local engine's baseline (one
process, trials in sequence, nthread 2).

All arms score the same K parameter sets: they are drawn once by the TPE sampler the train stage
uses (search.open_study's, seed train.seed; with K <= 10 every trial is a random start-up trial)
and enqueued in each arm's study, so every arm does the same work. Each arm runs the project's
own objective (search.make_objective) and loop (search.optimize: trials until the study as a
whole has K finished, MaxTrialsCallback); each arm has its own SQLite storage in a temp dir.

Each arm's processes run as subprocesses of this bench; the RSS of their process trees (the
Dask nannies and workers included) is summed every 0.2 s and the maximum kept. Trial times come
from the storage: `time to K` runs from the first trial's start to the K-th completion (parallel
workers can start one trial more than K: each sees fewer than K finished when it starts one),
`s/trial` is the median of each trial's own duration; `setup` is the arm's data loading and
DMatrix (or cluster and DaskQuantileDMatrix) building before its first trial.

    python -m bench.trials [--rows 1000000] [--trials 6]     # -> bench/RESULTS.md "trials"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30
TARGET = "default"
ARMS = {
    "A": "distributed: 1 process, each trial on a 2-worker Dask LocalCluster (1 thread each)",
    "B": "parallel: 2 processes sharing the study (SQLite), in-process XGBoost, nthread 1 each",
    "C": "baseline: 1 process, in-process XGBoost, nthread 2 (the local engine's default)",
}


# ---------------------------------------------------------------- data


def names(n_features: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n_features)]


def make_data(out: Path, rows: int, valid_rows: int, n_features: int, parts: int, seed: int):
    """Seeded synthetic feature rows (float32) with a binary target carrying signal (linear,
    an interaction and a threshold effect, ~22% positives), as Parquet parts per split."""
    import pandas as pd

    cols = names(n_features)
    w = np.random.default_rng(seed).normal(0, 0.6, n_features) * (np.arange(n_features) < 12)
    for split, n in (("train", rows), ("valid", valid_rows)):
        (out / split).mkdir(parents=True)
        for k, idx in enumerate(np.array_split(np.arange(n), parts)):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, k])
            x = rng.standard_normal((len(idx), n_features), dtype=np.float32)
            logit = x @ w + 0.7 * x[:, 0] * x[:, 1] + 0.8 * (x[:, 2] > 1.0) - 1.6
            y = (rng.random(len(idx)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            frame = pd.DataFrame(x, columns=cols)
            frame[TARGET] = y
            frame.to_parquet(out / split / f"part-{k}.parquet", index=False)


def parts(data: Path, split: str) -> list[Path]:
    return sorted((data / split).glob("part-*.parquet"))


# ---------------------------------------------------------------- one arm's process


def train_settings(trials: int, rounds: int, stop: int, nthread: int):
    from riskloop.settings import load_params

    tr = load_params(ROOT / "params.yaml").train
    return tr.model_copy(update={"n_trials": trials, "max_boost_rounds": rounds,
                                 "early_stopping_rounds": stop, "nthread": nthread,
                                 "pruning": False, "n_jobs": 1, "timeout_s": None})  # fmt: skip


def run_arm(args: argparse.Namespace) -> None:
    """One process of an arm: set up its data, join the study, run trials until K finished."""
    import pandas as pd
    import xgboost as xgb

    from training import search

    tr = train_settings(args.trials, args.rounds, args.stop, args.nthread)
    cols = names(args.features)
    t0 = time.perf_counter()
    study = search.open_study(args.study, tr, tr.seed + args.worker, url=args.storage)
    stats = {"worker": args.worker, "pid": os.getpid()}
    if args.engine == "dask":
        from riskloop.compute import dask_client
        from riskloop.settings import ComputeSettings
        from training import distributed

        compute = ComputeSettings(engine="dask", workers=2, threads_per_worker=1,
                                  memory_limit=args.memory_limit)  # fmt: skip
        with dask_client(compute) as client:
            frames = {s: distributed.read(parts(args.data, s), cols, TARGET) for s in ("train", "valid")}  # fmt: skip
            dtrain = distributed.matrix(client, frames["train"], cols, TARGET)
            dvalid = distributed.matrix(client, frames["valid"], cols, TARGET, ref=dtrain)
            rows = len(frames["train"])
            data = search.DistributedTuning(
                lambda p: distributed.tuning_score(client, dtrain, dvalid, p, tr), rows
            )
            stats["setup_s"] = time.perf_counter() - t0
            search.optimize(study, search.make_objective(data, tr, (), None), tr)
    else:
        frames = {s: pd.concat([pd.read_parquet(p) for p in parts(args.data, s)], ignore_index=True)
                  for s in ("train", "valid")}  # fmt: skip
        data = search.Tuning(
            xgb.DMatrix(frames["train"][cols], label=frames["train"][TARGET], nthread=args.nthread),
            xgb.DMatrix(frames["valid"][cols], label=frames["valid"][TARGET], nthread=args.nthread),
            None,
            len(frames["train"]),
        )
        del frames
        stats["setup_s"] = time.perf_counter() - t0
        search.optimize(study, search.make_objective(data, tr, (), None), tr)
    stats["total_s"] = time.perf_counter() - t0
    (args.out / f"worker-{args.worker}.json").write_text(json.dumps(stats))


# ---------------------------------------------------------------- the bench


def tree_rss(procs: list[psutil.Process]) -> tuple[int, int]:
    """(sum of RSS, process count) over `procs` and all their descendants."""
    members = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            members += [p, *p.children(recursive=True)]
    total = 0
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total, len(members)


def enqueue_startup(study, tr, k: int) -> list[dict]:
    """The parameter sets the train stage's sampler draws first (its start-up trials), drawn
    once here and enqueued, so every arm trains exactly these."""
    import optuna

    from training import search

    sampler = optuna.samplers.TPESampler(seed=tr.seed, n_startup_trials=min(10, tr.n_trials))
    draw = optuna.create_study(sampler=sampler, direction="maximize")
    sets = []
    for _ in range(min(k, 10)):
        t = draw.ask()
        sets.append(search.suggest(t, tr))
        draw.tell(t, 0.5)
    for p in sets:
        study.enqueue_trial(p)
    return sets


def bench_arm(arm: str, args: argparse.Namespace, tmp: Path) -> dict:
    import optuna

    from training import search

    out = tmp / f"arm-{arm}"
    out.mkdir()
    storage = f"sqlite:///{out / 'optuna.db'}"
    study_name = f"bench-trials-{arm}"
    n_procs, nthread, engine = {"A": (1, 1, "dask"), "B": (2, 1, "local"), "C": (1, 2, "local")}[
        arm
    ]
    tr = train_settings(args.trials, args.rounds, args.stop, nthread)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = search.open_study(study_name, tr, tr.seed, url=storage)
    enqueue_startup(study, tr, args.trials)
    load = os.getloadavg()[0]
    cmds = [[sys.executable, "-m", "bench.trials", "--arm-process", "--engine", engine,
             "--nthread", str(nthread), "--worker", str(i), "--data", str(tmp / "data"),
             "--out", str(out), "--storage", storage, "--study", study_name,
             "--trials", str(args.trials), "--rounds", str(args.rounds), "--stop", str(args.stop),
             "--features", str(args.features), "--memory-limit", args.memory_limit]
            for i in range(n_procs)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(nthread)}
    t0 = time.perf_counter()
    logs = [(out / f"worker-{i}.log").open("w") for i in range(n_procs)]
    children = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
                for c, f in zip(cmds, logs, strict=True)]  # fmt: skip
    watched = [psutil.Process(c.pid) for c in children]
    peak = procs = 0
    while any(c.poll() is None for c in children):
        total, n = tree_rss(watched)
        peak, procs = max(peak, total), max(procs, n)
        if time.perf_counter() - t0 > args.arm_timeout:  # the machine is shared: give up
            for p in watched:
                with contextlib.suppress(psutil.NoSuchProcess):
                    for q in [*p.children(recursive=True), p]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            q.kill()
            raise SystemExit(f"arm {arm}: over --arm-timeout {args.arm_timeout} s")
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    for f in logs:
        f.close()
    codes = [c.returncode for c in children]
    if any(codes):
        tails = "\n".join((out / f"worker-{i}.log").read_text()[-3000:] for i in range(n_procs))
        raise SystemExit(f"arm {arm}: exit codes {codes}\n{tails}")
    workers = [json.loads((out / f"worker-{i}.json").read_text()) for i in range(n_procs)]
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    ends = sorted(t.datetime_complete for t in done)
    first = min(t.datetime_start for t in done)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    best = max(done, key=lambda t: t.value)
    k = min(args.trials, len(ends))
    return {
        "arm": arm,
        "processes": n_procs,
        "nthread": nthread,
        "engine": engine,
        "wall_s": wall,
        "setup_s": max(w["setup_s"] for w in workers),
        "time_to_k_s": (ends[k - 1] - first).total_seconds(),
        "trials_run": len(done),
        "median_trial_s": statistics.median(durations),
        "median_rounds": statistics.median(t.user_attrs["best_iteration"] + 1 for t in done),
        "best_auc": best.value,
        "best_auc_first_k": max(
            t.value for t in sorted(done, key=lambda t: t.number)[: args.trials]
        ),
        "peak_rss": peak,
        "procs": procs,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head


def report(results: list[dict], args: argparse.Namespace, gen: dict[int, float]) -> str:
    rows = [
        "| train rows | arm | processes x nthread | time to K s | s/trial (throughput) | median trial s | "
        "median rounds | setup s | wall s | trials run | best valid AUC (first K) | "
        "peak RSS tree GiB | procs | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['rows']:,} | {r['arm']} {r['engine']} | {'1 + 2 workers' if r['engine'] == 'dask' else r['processes']} x {r['nthread']} | {r['time_to_k_s']:.1f} | "
            f"{r['time_to_k_s'] / args.trials:.1f} | {r['median_trial_s']:.1f} | "
            f"{r['median_rounds']:g} | {r['setup_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['trials_run']} | {r['best_auc_first_k']:.4f} | {r['peak_rss'] / GiB:.2f} | "
            f"{r['procs']} | {r['load_before']:.1f}/{r['load_after']:.1f} |"
        )
    arms = "\n".join(f"- {a}: {ARMS[a]}" for a in args.arms)
    cmd = "python -m bench.trials " + " ".join(sys.argv[1:])
    return f"""## Optuna trials: distributed vs parallel (issue 17)

Command: `{cmd.strip()}`, {results[0]["at"]}, commit {commit()}+ (uncommitted edits of others in the tree).

Machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / GiB:.0f} GiB RAM,
Python {platform.python_version()}. Shared: other sessions' test runs and benches ran on the same
2 cores during this bench (the load column is the 1-minute load average before/after each arm;
a load above 2 means the arms competed for the cores: read ratios, not absolute seconds).

Data: synthetic, seeded (bench/trials.py), N train + N/4 valid rows x {args.features} float32
features, binary target (~22% positives), {args.parts} Parquet parts per
split (generated in {", ".join(f"{g:.0f}" for g in gen.values())} s). Trials: K = {args.trials}, the same K parameter sets in
every arm (the train stage's TPE start-up draws, seed 42, enqueued), params.yaml's search space,
max_boost_rounds {args.rounds}, early_stopping_rounds {args.stop}, pruning off, valid-split
scoring (search.make_objective + search.optimize). Dask: LocalCluster 2 workers x 1 thread,
memory_limit {args.memory_limit}, data persisted on the workers as a DaskQuantileDMatrix.

{arms}

`time to K`: first trial start to the K-th trial completion (from the storage); `s/trial
(throughput)` = time to K / K; `median trial s`: a trial's own duration (parallel trials each run
on one core, so each is slower; two run at once). `setup`: data load + DMatrix (Dask: cluster
start, persist, DaskQuantileDMatrix) before the first trial, the slowest process. `wall`: the
arm's processes from launch to exit. Peak RSS: summed over the arm's process trees every 0.2 s.

{chr(10).join(rows)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="train rows (sizes)")
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=300, help="max_boost_rounds")
    ap.add_argument("--stop", type=int, default=20, help="early_stopping_rounds")
    ap.add_argument("--memory-limit", default="3GiB", help="per Dask worker")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seed", type=int, default=17, help="data seed")
    ap.add_argument("--arm-timeout", type=float, default=600, help="seconds per arm")
    ap.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    ap.add_argument("--conclusion", type=Path, default=None,
                    help="a Markdown file appended to the section (the reading of the table)")  # fmt: skip
    # one arm's process (the bench runs these)
    ap.add_argument("--arm-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", choices=["dask", "local"], help=argparse.SUPPRESS)
    ap.add_argument("--nthread", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    ap.add_argument("--study", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm_process:
        run_arm(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-trials-"))
    try:
        results, gen = [], {}
        for rows in args.rows:
            t0 = time.perf_counter()
            size = tmp / f"rows-{rows}"
            make_data(size / "data", rows, rows // 4, args.features, args.parts, args.seed)
            gen[rows] = time.perf_counter() - t0
            print(f"data: {rows:,} + {rows // 4:,} rows in {gen[rows]:.1f} s", flush=True)
            for arm in args.arms:
                r = {"rows": rows, **bench_arm(arm, args, size)}
                print(json.dumps(r), flush=True)
                results.append(r)
        body = report(results, args, gen)
        if args.conclusion:
            body += "\n" + args.conclusion.read_text()
        print(body)
        if not args.no_write:
            from bench.results import write_section

            write_section("trials", body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
