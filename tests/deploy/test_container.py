"""The serving container: `riskloop container` builds an image of a freshly trained champion's
bento (docker where an engine runs, else podman; on the local Debian base where the default
one cannot be pulled), and the running container answers predictions over HTTP as the model's
golden batch says, as a non-root user, configured only by its environment, with a read-only
root filesystem and the journal on a volume. The image carries a HEALTHCHECK and the model's
lineage in its labels, and no secret or build-host setting in its config, history or files.

Skips, saying why, where neither a Docker engine nor podman is available (and the local base
cannot be built); fails instead under RISKLOOP_REQUIRE_TOOLS=1 (CI), where `make test`
installs podman, buildah, runc and debootstrap (`make tools`). Cold (no base image, no layer
cache) the build takes several minutes; warm, the layers up to the bento's own files are
reused (deploy/container/README.md has the figures)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from pipelines import container
from tests.conftest import pg_databases
from tests.serving.server import free_port

pytestmark = pytest.mark.slow
KEY = f"k-container-{uuid.uuid4().hex[:12]}"
DB_URL = "sqlite:////tmp/p.db"  # inside the container: its /tmp is a tmpfs


def inspect(image) -> dict:
    cli, env, ref = image["cli"], image["env"], image["record"]["image"]
    out = subprocess.run([cli, "image", "inspect", ref], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return json.loads(out)[0]


def test_image_carries_lineage_healthcheck_and_a_non_root_user(image):
    doc = inspect(image)
    config = doc["Config"]
    labels = config["Labels"]
    record = image["record"]
    model = image["model_labels"]  # the registry's, carried by the bento's model
    assert labels["ai.riskloop.bento"] == record["bento"]
    assert labels["org.opencontainers.image.version"] == record["bento"].split(":")[1]
    assert labels["ai.riskloop.model.version"] == model["registry_version"] == "1"
    assert labels["ai.riskloop.model.version"] == record["model_version"]
    assert labels["ai.riskloop.model.run_id"] == model["run_id"] and len(model["run_id"]) == 32
    assert labels["ai.riskloop.data.md5"] == model["data_hash"] != ""
    assert labels["ai.riskloop.model.tag"] == f"{model['name']}:{model['version']}"
    assert labels["org.opencontainers.image.base.name"] == record["base_image"]
    health = config.get("Healthcheck") or doc.get("Healthcheck") or doc.get("HealthCheck")
    assert health and "/livez" in " ".join(health["Test"]), doc
    assert config["User"] == "bentoml"


def test_no_secret_or_build_host_setting_in_the_image(image):
    cli, env, ref = image["cli"], image["env"], image["record"]["image"]
    config = inspect(image)["Config"]
    names = {e.split("=", 1)[0] for e in config.get("Env") or []}
    assert not names & {"API_KEYS", "DATABASE_URL", "MLFLOW_TRACKING_URI", "SSL_CERT_FILE"}
    history = subprocess.run([cli, "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref],
                             env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    for secret in ("API_KEYS", "DATABASE_URL", "PASSWORD", KEY):
        assert secret not in history, secret
    # the build host's uv settings were mounted over the base's placeholder, never copied
    uv_toml = subprocess.run([cli, "run", "--rm", "--network", "none", "--entrypoint", "cat", ref,
                              container.UV_CONFIG_TARGET], env=env, capture_output=True, text=True)  # fmt: skip
    assert "system-certs" not in uv_toml.stdout and "index" not in uv_toml.stdout


@contextlib.contextmanager
def started(image, *args: str, port: int):
    """The image run with `args` (and a journal volume); yields (container name, seconds from
    `run` to /readyz 200 on `port`); stopped and removed after."""
    cli, env, ref = image["cli"], image["env"], image["record"]["image"]
    name, volume = f"riskloop-test-{uuid.uuid4().hex[:8]}", f"rl-journal-{uuid.uuid4().hex[:8]}"
    cmd = [cli, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "-v", f"{volume}:{container.JOURNAL_DIR}", "-e", f"API_KEYS={KEY}",
           "-e", "ENVIRONMENT=production", *args, ref]  # fmt: skip
    begun = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = subprocess.run([cli, "inspect", "--format", "{{.State.Running}}", name], env=env,
                                   capture_output=True, text=True).stdout.strip()  # fmt: skip
            assert state == "true", logs(cli, name, env)
            assert time.monotonic() - begun < 300, logs(cli, name, env)
            time.sleep(0.25)
        yield name, round(time.monotonic() - begun, 1)
    finally:
        subprocess.run([cli, "stop", "-t", "40", name], env=env, capture_output=True)
        subprocess.run([cli, "rm", "-f", name], env=env, capture_output=True)
        subprocess.run([cli, "volume", "rm", "-f", volume], env=env, capture_output=True)


@pytest.fixture(scope="module")
def running(image):
    """The image started as production would: keys and store from the environment, read-only
    root, /tmp a tmpfs, the journal on a volume (no other setting: the image's defaults put
    BentoML's home and numba's cache in /tmp and SPOOL_DIR on the volume)."""
    port = free_port()
    args = ["-p", f"127.0.0.1:{port}:3000", "-e", f"DATABASE_URL={DB_URL}"]
    with started(image, *args, port=port) as (name, ready_s):
        yield {"url": f"http://127.0.0.1:{port}", "name": name, "ready_s": ready_s, **image}


def logs(cli: str, name: str, env: dict[str, str]) -> str:
    proc = subprocess.run([cli, "logs", name], env=env, capture_output=True, text=True)
    return (proc.stdout + proc.stderr)[-4000:]


def sh(running, *cmd: str) -> str:
    return subprocess.run([running["cli"], "exec", running["name"], *cmd], env=running["env"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def test_running_container_scores_the_golden_batch(running):
    golden = running["golden"]
    n = min(8, golden["real_rows"])
    body = {"records": golden["records"][:n], "explain": "none"}
    headers = {"X-API-Key": KEY}
    assert httpx.post(running["url"] + "/predict", json=body, timeout=30).status_code == 401
    resp = httpx.post(running["url"] + "/predict", json=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    answers = resp.json()["predictions"]
    assert [a["risk_score"] for a in answers] == [round(100 * p) for p in golden["probability"][:n]]
    for answer, expected in zip(answers, golden["probability"][:n], strict=True):
        assert answer["probability_of_default"] == pytest.approx(expected, abs=1e-6)
        assert answer["model_version"] == "1"
    # every answered row reached the store inside the container
    count = ("import sqlite3, time\nfor _ in range(40):\n"
             "    n = sqlite3.connect('/tmp/p.db').execute('select count(*) from predictions').fetchone()[0]\n"
             f"    if n >= {n}: break\n    time.sleep(0.25)\nprint(n)")  # fmt: skip
    assert int(sh(running, "python", "-c", count)) == n


def test_runs_as_non_root_and_reports_healthy(running):
    assert sh(running, "id", "-u") == "1034"
    if running["cli"] == "podman":
        proc = subprocess.run(["podman", "healthcheck", "run", running["name"]],
                              env=running["env"], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:  # docker runs it only on its own schedule: run the same probe
        sh(running, "python", "-c", container.HEALTHCHECK_PROBE)
    journal = sh(running, "stat", "-c", "%u %a", container.JOURNAL_DIR)
    assert journal == "1034 700"


def test_report_timings(running, record_property):
    """Not a check: the figures the README quotes, in the test report (-rP shows them)."""
    record = running["record"]
    figures = {"image": record["image"], "base": record["base_image"],
               "size_mb": round((record["size_bytes"] or 0) / 1e6), "build_s": record["build_seconds"],
               "container_make_s": record["wall_s"], "run_to_ready_s": running["ready_s"]}  # fmt: skip
    for key, value in figures.items():
        record_property(key, value)
    print(json.dumps(figures))


def test_serves_on_postgresql(image):
    """The production store: PostgreSQL (the machine's, over the host network), migrated by
    the container itself at start; a bare postgresql:// URL gets the psycopg2 driver."""
    with pg_databases() as create:
        url = create()
        port = free_port()
        args = ["--network", "host", "-e", f"PORT={port}",
                "-e", "DATABASE_URL=" + url.replace("postgresql+psycopg2://", "postgresql://")]  # fmt: skip
        with started(image, *args, port=port):
            record = image["golden"]["records"][0]
            resp = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": [record]},
                              headers={"X-API-Key": KEY}, timeout=30)  # fmt: skip
            assert resp.status_code == 200, resp.text
            pid = resp.json()["predictions"][0]["prediction_id"]
            engine = sa.create_engine(url)
            try:
                for _ in range(40):
                    with engine.connect() as conn:
                        row = conn.execute(sa.text("select model_version from predictions "
                                                   "where prediction_id = :p"), {"p": pid}).first()  # fmt: skip
                    if row:
                        break
                    time.sleep(0.25)
            finally:
                engine.dispose()
            assert row is not None and row[0] == "1"


def test_drains_and_exits_cleanly_on_sigterm(running):
    cli, env, name = running["cli"], running["env"], running["name"]
    started = time.monotonic()
    subprocess.run([cli, "stop", "-t", "40", name], env=env, check=True, capture_output=True)
    assert time.monotonic() - started < 35  # drained (SHUTDOWN_DRAIN_S) and exited, not killed
    code = subprocess.run([cli, "inspect", "--format", "{{.State.ExitCode}}", name], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert code == "0", logs(cli, name, env)
