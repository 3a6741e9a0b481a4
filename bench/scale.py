"""Scale-out (issue 17): `prepare`, `features`, `train`, `evaluate`, `score-batch` and `monitor` on a synthetic Taiwan-shaped
dataset of 1M, 5M and 20M rows (bench/scale_data.py), on the local engine and on Dask (a
LocalCluster of 2 workers, 1 thread each, compute.memory_limit well below the data's size in
memory). Each stage runs as a subprocess in a throwaway workspace (params.yaml, data/raw/<the
raw file>, PYTHONPATH = this repo), as the stage tests run it; while it runs, the RSS of its
whole process tree (the stage, and for Dask the nannies and workers it starts) is summed every
0.2 s and the maximum kept. A stage whose tree passes --rss-cap is killed by the bench (the
machine is shared: this is the local engine's cap too) and, like one that fails by itself
(MemoryError, a worker killed...), is recorded with its peak and reason; the bench goes on.

`score-batch` scores the portfolio file; `score-batch-log` scores it as `make score-batch` does,
every row also logged to the prediction store (the workspace's embedded SQLite); `monitor` then
runs the monitoring job over that whole window (`--last <rows>`): counted in the store, judged
on its `monitoring.window.sample_rows` sample.

Slope: seconds per million rows, a least-squares line of wall time over rows (per stage and
engine, successful runs of the same stage code, code_id). Measurements are kept in
bench/scale.json, replaced per (rows, engine, stage) as each stage ends, so a later run of one
size joins the earlier ones in the table.

    python -m bench.scale --rows 1000000 5000000          # -> bench/RESULTS.md, bench/scale.json
    make bench-scale BENCH_ARGS='--rows 1000000'
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import yaml

from bench import scale_data
from bench.results import write_section

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STORE = Path(__file__).resolve().parent / "scale.json"
STAGES = ("prepare", "features", "train", "evaluate", "score-batch", "score-batch-log", "monitor")
NEEDS = {"features": "prepare", "train": "features", "evaluate": "train",
         "monitor": "score-batch-log"}  # reads what it wrote  # fmt: skip
# A short search, the same on both engines (the stage's work, not the search's budget, is
# measured): each trial early-stopped on the valid split, trained by the workers on Dask.
BENCH_TRAIN = {
    "n_trials": 3,
    "tune_cv_below_rows": None,
    "cv_folds": 2,
    "max_boost_rounds": 100,
    "early_stopping_rounds": 10,
}
GiB = 1 << 30
LOGS = Path(tempfile.gettempdir()) / "riskloop-scale-logs"  # failed stages' output
CHAMPION_ROUNDS = 150  # the shipped champion: 253 rounds, max_depth 6


@dataclass
class Run:
    rows: int
    engine: str
    stage: str
    ok: bool
    wall_s: float
    peak_rss: int  # bytes, summed over the process tree
    peak_proc_rss: int  # bytes, the largest single process of the tree
    procs: int  # most processes in the tree at once
    returncode: int | None
    reason: str  # why it failed ("" if ok)
    load_before: float  # 1-minute load average when the stage started
    at: str
    commit: str = ""  # this repo's HEAD when the stage ran ("+" if its code was edited)
    code: str = ""  # the stages' code as it ran (code_id): slopes fit runs of one code only
    memory_limit: str = ""  # per Dask worker ("" for the local engine)


def tree_rss(proc: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, largest RSS, process count) over `proc` and its descendants."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    sizes = []
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            sizes.append(p.memory_info().rss)
    return sum(sizes), max(sizes, default=0), len(sizes)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group this bench started for a stage (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def measure(cmd: list[str], cwd: Path, env: dict, log: Path, rss_cap: int,
            timeout_s: float, interval: float = 0.2) -> dict:  # fmt: skip
    """Run `cmd` in its own session; sample its tree's RSS until it ends (killing the tree at
    `rss_cap` or `timeout_s`); returns wall time, peaks, return code and the bench's reason."""
    with log.open("w") as out:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        proc = psutil.Process(child.pid)
        peak = peak_one = procs = 0
        killed = ""
        while child.poll() is None:
            total, one, n = tree_rss(proc)
            peak, peak_one, procs = max(peak, total), max(peak_one, one), max(procs, n)
            if total > rss_cap and not killed:
                killed = f"killed by the bench: tree RSS over the {rss_cap / GiB:.0f} GiB cap"
                kill_group(child.pid)
            elif time.perf_counter() - t0 > timeout_s and not killed:
                killed = f"killed by the bench: over the {timeout_s / 60:.0f} min timeout"
                kill_group(child.pid)
            time.sleep(interval)
        wall = time.perf_counter() - t0
        kill_group(child.pid)  # a worker left behind by a failed stage
    return {"wall_s": wall, "peak_rss": peak, "peak_proc_rss": peak_one, "procs": procs,
            "returncode": child.returncode, "killed": killed}  # fmt: skip


def failure_reason(result: dict, log: Path) -> str:
    if result["killed"]:
        return result["killed"]
    rc = result["returncode"]
    if rc == 0:
        return ""
    text = log.read_text(errors="replace")
    for marker in ("MemoryError", "KilledWorker", "Killed", "Worker exceeded", "out of memory"):
        if marker in text:
            line = next(ln for ln in reversed(text.splitlines()) if marker in ln)
            return f"exit {rc}: {line.strip()[:200]}"
    if rc < 0:
        return f"killed by signal {-rc} (not by the bench: the kernel's OOM killer?)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
    last = errors or lines
    return f"exit {rc}: {last[-1][:200] if last else 'no output'}"


def workspace_params(engine: str, args: argparse.Namespace) -> dict:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["compute"] = {"engine": engine, "workers": args.workers, "threads_per_worker": 1,
                      "memory_limit": args.memory_limit, "partition_rows": args.partition_rows}  # fmt: skip
    doc["split"]["method"] = "hash"  # both engines: the same split, so the same work
    doc["train"].update(BENCH_TRAIN)
    return doc


def stage_env(ws: Path, state: Path) -> dict:
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(ws), "PYTHONPATH": str(ROOT),
            "RISKLOOP_STATE_DIR": str(state),
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}  # fmt: skip


def make_champion(state: Path, seed: int) -> None:
    """A @champion in a fresh MLflow store under `state`: the project's feature code and
    XGBoost params, fitted on 30,000 synthetic rows (run in a subprocess: MLflow's globals
    stay out of the bench)."""
    code = ("import sys; from pathlib import Path; from bench.scale import _champion; "
            f"_champion(Path({str(state)!r}), {seed})")  # fmt: skip
    env = {**stage_env(ROOT, state), "HOME": str(state.parent)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"champion: {proc.stdout[-2000:]}{proc.stderr[-4000:]}")


def _champion(state: Path, seed: int) -> None:
    import pandas as pd

    from riskloop.settings import load_params
    from tests.modelling import fit_small_model, register_champion

    params = load_params(ROOT / "params.yaml")
    raw = pd.concat(list(scale_data.chunks(30_000, seed + 1_000)), ignore_index=True)
    model, parts = fit_small_model(
        raw, params, CHAMPION_ROUNDS, ("train",), nthread=params.train.nthread
    )  # as the train stage fits
    register_champion(state, model, params, parts["test"])


def bench_size(rows: int, args: argparse.Namespace, work: Path, state: Path,
               record: Callable[[Run], None]) -> list[Run]:  # fmt: skip
    data = work / f"data-{rows}"
    t0 = time.perf_counter()
    raw_name = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["raw_file"]
    csv, portfolio = data / raw_name, data / "portfolio.parquet"
    scale_data.write(rows, args.seed, csv, portfolio)
    print(f"{rows:,} rows generated in {time.perf_counter() - t0:.0f} s: CSV "
          f"{csv.stat().st_size / GiB:.2f} GiB, Parquet {portfolio.stat().st_size / GiB:.2f} GiB",
          flush=True)  # fmt: skip
    runs = []
    for engine in args.engines:
        ws = work / f"{rows}-{engine}"
        (ws / "data" / "raw").mkdir(parents=True)
        os.link(csv, ws / "data" / "raw" / raw_name)
        for code in CODE_DIRS:
            (ws / code).symlink_to(ROOT / code)  # a model logs its code from the stage's cwd
        (ws / "params.yaml").write_text(yaml.safe_dump(workspace_params(engine, args),
                                                       sort_keys=False))  # fmt: skip
        out = "scored" if engine == "dask" else "scored.parquet"
        score = [str(BIN / "riskloop"), "score-batch", str(portfolio)]
        cmds = {"prepare": [sys.executable, "-m", "pipelines.prepare"],
                "features": [sys.executable, "-m", "pipelines.build_features"],
                "train": [sys.executable, "-m", "pipelines.train"],
                "evaluate": [sys.executable, "-m", "pipelines.evaluate"],
                "score-batch": [*score, "--out", out],
                "score-batch-log": [*score, "--out", f"logged-{out}", "--log"],
                "monitor": [sys.executable, "-m", "pipelines.monitor", "--last", str(rows), "--no-act"]}  # fmt: skip
        # the champion's store, one copy a workspace: train registers its challenger (and keeps
        # its Optuna study) there, evaluate compares it with the champion
        ws_state = ws / "state"
        shutil.copytree(state, ws_state)
        done: set[str] = set()
        for stage in STAGES:
            if stage not in args.stages:
                continue
            if stage in NEEDS and NEEDS[stage] not in done:
                runs.append(Run(rows, engine, stage, False, 0.0, 0, 0, 0, None,
                                f"not run: {NEEDS[stage]} failed", os.getloadavg()[0], _now(),
                                head(), code_id()))  # fmt: skip
                record(runs[-1])
                continue
            load, commit, code = os.getloadavg()[0], head(), code_id()
            log = work / f"{rows}-{engine}-{stage}.log"
            res = measure(cmds[stage], ws, stage_env(ws, ws_state), log, args.rss_cap * GiB,
                          args.timeout_min * 60)  # fmt: skip
            reason = failure_reason(res, log)
            run = Run(rows, engine, stage, not reason, round(res["wall_s"], 1), res["peak_rss"],
                      res["peak_proc_rss"], res["procs"], res["returncode"], reason, load, _now(),
                      commit, code, args.memory_limit if engine == "dask" else "")  # fmt: skip
            runs.append(run)
            record(run)
            if run.ok:
                done.add(stage)
            print(f"  {engine:5} {stage:11} {'ok' if run.ok else 'FAILED'} {run.wall_s:8.1f} s "
                  f"peak {run.peak_rss / GiB:5.2f} GiB (largest process {run.peak_proc_rss / GiB:.2f}, "
                  f"{run.procs} procs) load {load:.1f} {reason}", flush=True)  # fmt: skip
            if not run.ok:  # kept for a look after the work dir is gone
                LOGS.mkdir(exist_ok=True)
                shutil.copyfile(log, LOGS / log.name)
        if not args.keep:
            shutil.rmtree(ws)
    if not args.keep:
        shutil.rmtree(data)
    return runs


CODE_DIRS = ("pipelines", "features", "riskloop", "serving", "training", "monitoring")


def code_id() -> str:
    """A short hash of the code the stages run: the tracked trees of CODE_DIRS at HEAD, their
    uncommitted edits and their untracked files (commits elsewhere do not change it)."""
    git = ["git", "-C", str(ROOT)]
    trees = subprocess.run([*git, "rev-parse", *(f"HEAD:{d}" for d in CODE_DIRS)],
                           capture_output=True, text=True).stdout  # fmt: skip
    diff = subprocess.run([*git, "diff", "HEAD", "--", *CODE_DIRS], capture_output=True).stdout
    untracked = subprocess.run([*git, "ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS],
                               capture_output=True, text=True).stdout.split()  # fmt: skip
    h = hashlib.sha1(trees.encode() + diff)
    for name in sorted(untracked):
        h.update(name.encode() + (ROOT / name).read_bytes())
    return h.hexdigest()[:10]


def head() -> str:
    """HEAD's short hash, with "+" if the code the stages run is edited in the work tree
    (this repo is shared: other sessions commit while the bench runs)."""
    git = ["git", "-C", str(ROOT)]
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", *CODE_DIRS], capture_output=True,
                           text=True)  # fmt: skip
    return rev.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def label(run: dict) -> str:
    """The engine as the table shows it: Dask with its workers' memory limit (runs recorded
    before the field existed all had 1.5GiB)."""
    if run["engine"] == "local":
        return "local"
    return f"dask {run.get('memory_limit') or '1.5GiB'}"


def slopes(runs: list[dict]) -> dict[tuple[str, str], tuple[float, float, list[int], str, str]]:
    """(engine, stage) -> (seconds per million rows, intercept s, sizes fitted, code, load): over
    the successful runs of the code the newest run of the pair ran."""
    out = {}
    for engine in sorted({label(r) for r in runs}, key=lambda e: (e != "local", e)):
        for stage in STAGES:
            ok = [r for r in runs if label(r) == engine and r["stage"] == stage and r["ok"]]
            if not ok:
                continue
            code = max(ok, key=lambda r: r["at"])["code"]
            ok = [r for r in ok if r["code"] == code]
            if len({r["rows"] for r in ok}) >= 2:
                x = np.array([r["rows"] / 1e6 for r in ok])
                y = np.array([r["wall_s"] for r in ok])
                slope, intercept = np.polyfit(x, y, 1)
                sizes = sorted(r["rows"] for r in ok)
                commits = ", ".join(sorted({r["commit"] for r in ok}))
                loads = [r["load_before"] for r in ok]
                load = f"{min(loads):.1f}-{max(loads):.1f}"
                out[(engine, stage)] = (float(slope), float(intercept), sizes, f"{code} ({commits})",
                                        load)  # fmt: skip
    return out


def render(store: dict) -> str:
    runs = sorted(store["runs"], key=lambda r: (r["rows"], label(r) != "local", label(r),
                                                STAGES.index(r["stage"])))  # fmt: skip
    conf = store["config"]
    lines = [
        "## Scale-out: prepare, features, train, evaluate, score-batch, monitor at millions of rows, local vs Dask (issue 17)",
        "",
        "Commands (each replaced the sizes it ran; `make bench-scale` runs "
        "`python -m bench.scale`):",
        "",
        *[f"- `{c['command']}`, {c['at']}: ran {', '.join(f'{n:,}' for n in c['rows'])} rows"
          for c in store["commands"]],
        "",
        f"Machine: {conf['machine']}. Shared: CI-like test runs of other sessions may run beside "
        "this bench on the same 2 cores (the load column is the 1-minute load average as each "
        "stage started; read timings with it). Data: bench/scale_data.py, seed "
        f"{conf['seed']} (synthetic, Taiwan-shaped: the shipped file's 34 columns and contract; "
        "the CSV is the raw file `prepare` reads, a Parquet file of 500,000-row row groups "
        "without the target is score-batch's input). Both engines use `split.method: hash`. "
        f"Dask: a LocalCluster of {conf['workers']} workers x 1 thread, each with the memory_limit "
        f"the engine column names, partition_rows {conf['partition_rows']:,}. "
        f"Every stage (local engine included) is killed by the bench if its process tree passes "
        f"{conf['rss_cap_gib']} GiB RSS, to keep the shared machine out of the OOM killer. "
        f"score-batch: a @champion of {CHAMPION_ROUNDS} rounds (max_depth 6, nthread 2, the train "
        "stage's XGBoost params) fitted on 30,000 synthetic rows, scoring with reason codes "
        "(exact TreeSHAP); local writes one Parquet file, Dask a Parquet dataset. train: a short "
        f"search, the same on both engines ({', '.join(f'{k} {v}' for k, v in BENCH_TRAIN.items())}), "
        "then the CV and the refit; it registers a challenger beside that champion. evaluate: "
        "headline metrics on every test row (Dask: score counts from the workers), the model "
        "card and gates on evaluate.sample_rows rows of each split, challenger and champion "
        "both scored. score-batch-log: score-batch as `make score-batch` runs it, every row also "
        "logged to the prediction store (the workspace's embedded SQLite, each Dask worker its "
        "own partitions). monitor: `python -m pipelines.monitor --last <rows> --no-act` over that "
        "whole logged window: counted in the store, drift judged on the monitoring.window.sample_rows "
        "sample the store picks by prediction id (no outcomes are logged: no realized AUC). `commit`: "
        "the repo's HEAD as the stage ran (other sessions commit to it meanwhile).",
        "",
        "Peak RSS is summed over the stage's process tree every 0.2 s (the stage, and under Dask "
        "the nannies and workers); shared pages count once per process, so it is an upper "
        "bound. `largest` is the biggest single process at any sample.",
        "",
        "| rows | engine | stage | result | wall s | rows/s | peak RSS tree GiB | largest process GiB | procs | load | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:
        result = "ok" if r["ok"] else f"**failed**: {r['reason']}"
        rate = f"{r['rows'] / r['wall_s']:,.0f}" if r["ok"] and r["wall_s"] else ""
        wall = f"{r['wall_s']:.1f}" if r["wall_s"] else ""
        if not r["procs"]:  # not run
            lines.append(f"| {r['rows']:,} | {label(r)} | {r['stage']} | {r['reason']} "
                         f"|  |  |  |  |  | {r['load_before']:.1f} | {r.get('commit', '')} |")  # fmt: skip
            continue
        lines.append(f"| {r['rows']:,} | {label(r)} | {r['stage']} | {result} | {wall} | "
                     f"{rate} | {r['peak_rss'] / GiB:.2f} | {r['peak_proc_rss'] / GiB:.2f} | "
                     f"{r['procs']} | {r['load_before']:.1f} | {r.get('commit', '')} |")  # fmt: skip
    fits = slopes(runs)
    if fits:
        lines += ["", "Slope: seconds per million rows (least-squares line of wall time over rows, "
                  "successful runs of the same stage code (bench.scale.code_id: the trees of "
                  f"{', '.join(CODE_DIRS)}); the intercept is the fixed cost: imports, cluster "
                  "start, model load; a negative one says the load moved between the runs more "
                  "than the fixed cost: read such a line as rough).", "",
                  "| engine | stage | s per 1M rows | intercept s | sizes fitted | load | code (commits) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {e} | {s} | {v[0]:.1f} | {v[1]:.1f} | {', '.join(f'{n:,}' for n in v[2])} "
                  f"| {v[4]} | {v[3]} |" for (e, s), v in fits.items()]  # fmt: skip
    return "\n".join(lines)


def load_store() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {"commands": [], "runs": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--engines", nargs="+", choices=("local", "dask"), default=["local", "dask"])
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1.5GiB", help="per Dask worker")
    ap.add_argument("--partition-rows", type=int, default=250_000)
    ap.add_argument("--rss-cap", type=float, default=12, help="GiB; a stage's tree above is killed")
    ap.add_argument("--timeout-min", type=float, default=40, help="per stage")
    ap.add_argument("--workdir", type=Path, help="default: a fresh directory under $TMPDIR")
    ap.add_argument("--keep", action="store_true", help="keep the data and workspaces")
    ap.add_argument("--no-write", action="store_true", help="print only: no scale.json, RESULTS.md")
    args = ap.parse_args()
    for stage, needs in NEEDS.items():
        if stage in args.stages and needs not in args.stages:
            ap.error(f"{stage} reads what {needs} writes: run them together")

    work = Path(tempfile.mkdtemp(prefix="riskloop-scale-", dir=args.workdir))
    print(f"work in {work}", flush=True)
    state = work / "state"
    try:
        make_champion(state, args.seed)
        command = "python -m bench.scale " + " ".join(sys.argv[1:])

        def record(run: Run) -> None:
            """Into bench/scale.json and RESULTS.md after every stage: a stopped run counts."""
            if args.no_write:
                return
            store = load_store()
            key = (run.rows, label(asdict(run)), run.stage)
            store["runs"] = [r for r in store["runs"] if (r["rows"], label(r), r["stage"]) != key]
            store["runs"].append(asdict(run))
            store["config"] = {"seed": args.seed, "workers": args.workers,
                               "partition_rows": args.partition_rows, "rss_cap_gib": args.rss_cap,
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                               f"{psutil.virtual_memory().total / GiB:.0f} GiB RAM, "
                               f"Python {platform.python_version()}"}  # fmt: skip
            old = next((c for c in store["commands"] if c["command"] == command), None)
            done = sorted({*(old["rows"] if old and old["at"] >= started else []), run.rows})
            entry = {"command": command, "at": started, "rows": done}
            store["commands"] = [c for c in store["commands"] if c["command"] != command] + [entry]
            STORE.write_text(json.dumps(store, indent=1) + "\n")
            write_section("scale", render(store))

        started = _now()
        for rows in args.rows:
            bench_size(rows, args, work, state, record)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_write:
        print(render(load_store()))


if __name__ == "__main__":
    main()
