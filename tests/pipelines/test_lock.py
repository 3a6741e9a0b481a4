"""The committed experiment is the committed code: dvc.lock records, for every stage, the
md5 of each dependency git tracks, the params it reads and the data version data.dvc pins.
If any differs, a fresh clone's `make run` would retrain from other code than the lock says
produced metrics.json. (A fresh clone reproducing metrics.json itself is a measurement: see
the README's "Reproducible" paragraph.)"""

from __future__ import annotations

import hashlib
import subprocess

import yaml

from tests.conftest import ROOT


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _param(doc: dict, dotted: str):
    node = doc
    for part in dotted.split("."):
        node = node[part]
    return node


def lock_problems() -> list[str]:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    pinned = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())  # fmt: skip
    problems = []
    for name, stage in pipeline.items():
        locked = lock.get(name)
        if locked is None:
            problems.append(f"stage {name}: not in dvc.lock")
            continue
        if locked["cmd"] != stage["cmd"]:
            problems.append(f"stage {name}: cmd {stage['cmd']!r} locked as {locked['cmd']!r}")
        deps = {d["path"]: d for d in locked.get("deps", [])}
        for path in stage.get("deps", []):
            if path not in deps:
                problems.append(f"stage {name}: dependency {path} not in dvc.lock")
            elif path == pinned["path"] and deps[path]["md5"] != pinned["md5"]:
                problems.append(f"stage {name}: {path} locked at {deps[path]['md5']}, data.dvc pins {pinned['md5']}")  # fmt: skip
            elif path in tracked and deps[path]["md5"] != _md5(ROOT / path):
                problems.append(f"stage {name}: {path} changed since dvc.lock")
        locked_params = locked.get("params", {}).get("params.yaml", {})
        for key in stage.get("params", []):
            if locked_params.get(key, object()) != _param(params, key):
                problems.append(f"stage {name}: params.yaml {key} changed since dvc.lock")
        for out in stage.get("metrics", []) + stage.get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            entry = next((o for o in locked.get("outs", []) if o["path"] == path), None)
            if path in tracked and (entry is None or entry["md5"] != _md5(ROOT / path)):
                problems.append(
                    f"stage {name}: committed {path} is not the output dvc.lock records"
                )
    return problems


def test_dvc_lock_matches_the_committed_code_params_and_data():
    problems = lock_problems()
    assert not problems, (
        "dvc.lock does not describe the committed experiment:\n  "
        + "\n  ".join(problems)
        + "\nrun `dvc repro` (from a clean state: `make clean`) and commit dvc.lock and metrics.json"
    )


def test_serving_requirements_are_the_locked_serving_set():
    """serving/requirements.txt (the bento's and the container's environment) is exported from
    uv.lock's serving set by the command in its header: a stale copy would ship other
    versions than the ones tested, or miss a package the service now imports."""
    path = ROOT / "serving/requirements.txt"
    command = path.read_text().splitlines()[1].strip("# ").split()
    assert command[:2] == ["uv", "export"] and "--no-dev" in command, command
    uv = str(ROOT / ".venv/bin/uv")
    args = command[1 : command.index("-o")]  # without -o, uv export prints the requirements
    out = subprocess.run([uv, *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    body = [line for line in out.splitlines() if not line.startswith("#")]
    assert body == [line for line in path.read_text().splitlines() if not line.startswith("#")]
    packages = {line.split("==")[0] for line in body if "==" in line}
    assert {"bentoml", "mlflow-skinny", "xgboost-cpu", "cronsim"} <= packages
    assert not {"dvc", "optuna", "evidently", "mlflow"} & packages  # the training stack stays out
