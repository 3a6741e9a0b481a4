"""The serving image, built once for every container test here (test_container, test_compose_up):
a freshly trained champion's bento, as `riskloop container` builds it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from pipelines import container
from tests.conftest import ROOT, needed
from tests.serving.server import build_bento, train_champion

IMAGE = "riskloop-test"


@pytest.fixture(scope="package")
def engine() -> tuple[str, dict[str, str]]:
    """(docker | podman: what runs the image, the environment its commands run in)."""
    env = container.engine_env()
    if container.docker_engine(env):
        return "docker", env
    if shutil.which("podman") is None:
        needed("neither a Docker engine (`docker info`) nor podman is available (Debian, as "
               "root: `make tools` installs podman, buildah, runc and debootstrap)")  # fmt: skip
    offline_base = container.image_exists("podman", container.LOCAL_BASE, env) or (
        shutil.which("debootstrap") and shutil.which("buildah") and os.geteuid() == 0
    )
    if not offline_base and not container.image_exists(
        "podman", container.qualified("python:3.11-slim"), env
    ):
        needed("podman is here but no base image is: the local one needs debootstrap and "
               "buildah, as root (`make tools`)")  # fmt: skip
    return "podman", env


@pytest.fixture(scope="package")
def image(engine, tmp_path_factory, raw, params):
    """A champion, its bento, and the image `riskloop container` builds of it."""
    cli, env = engine
    state = tmp_path_factory.mktemp("container-state")
    bento_home = tmp_path_factory.mktemp("container-bentoml")
    train_champion(state, raw, params)
    build_bento(state, bento_home)
    run_env = {**env, "RISKLOOP_STATE_DIR": str(state), "BENTOML_HOME": str(bento_home),
               "PYTHONWARNINGS": "ignore"}  # fmt: skip
    run_env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.container", "--image", IMAGE],
                          cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    print("\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                    if not line.startswith(("INFO", "WARNING", " ", "$"))))  # fmt: skip
    record = json.loads((state / "deploy" / "image.json").read_text())
    record["wall_s"] = round(time.monotonic() - started, 1)
    golden = json.loads(next(bento_home.glob("models/*/*/mlflow_model/artifacts/golden.json"))
                        .read_text())  # fmt: skip
    model = yaml.safe_load(next(bento_home.glob("models/*/*/model.yaml")).read_text())
    model_labels = {**model["labels"], "name": model["name"], "version": model["version"]}
    yield {"cli": cli, "env": env, "record": record, "golden": golden, "model_labels": model_labels}
    # the image goes; the layers below the bento's own files stay cached for the next build
    subprocess.run([cli, "rmi", record["image"]], env=env, capture_output=True)
