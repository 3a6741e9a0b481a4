"""`make compose-images`: the images deploy/compose/compose.yaml runs besides the serving image
(`make container`).

    riskloop compose-images                 riskloop-jobs:latest; the postgres stand-in if needed

- riskloop-jobs:latest (deploy/compose/jobs.Containerfile): riskloop's locked environment for
  the MLflow server and the scheduler, on python:3.11-slim where it is present or can be
  pulled, else on the local Debian base (as `make container` picks).
- localhost/riskloop-postgres:15 (deploy/compose/postgres.Containerfile), only where the
  official postgres:16 can be neither found nor pulled: PostgreSQL from Debian's packages with
  the official image's start contract. Compose takes it from POSTGRES_IMAGE in .env.

Same engine and settings as `make container` (CONTAINER_BACKEND, CONTAINER_BASE,
deploy/container/*.conf). Layers are cached: a second run takes seconds."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines import container as ctr
from riskloop.cli import run_main
from riskloop.errors import RiskloopError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "deploy" / "compose"
JOBS_IMAGE = "riskloop-jobs:latest"
POSTGRES_OFFICIAL = "postgres:16"  # compose.yaml's default POSTGRES_IMAGE
POSTGRES_LOCAL = "localhost/riskloop-postgres:15"


def build_image(backend: str, containerfile: Path, context: Path, tag: str,
                build_args: dict[str, str], env: dict[str, str]) -> float:  # fmt: skip
    """One `build`; returns its seconds. podman/buildah get the host's CA bundle, uv settings
    and uv's persistent cache as RUN-step volumes (as `make container` does); docker builds
    with its own network and cache."""
    cmd = [backend, "bud" if backend == "buildah" else "build", "-f", str(containerfile),
           "-t", tag]  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="compose-", dir=ctr.work_dir()))
    try:
        if backend in ("podman", "buildah"):
            cmd += ["--network", "host", "--layers", "--format", "docker"]
            cmd += [a for m in ctr.build_mounts(scratch) for a in ("--volume", m)]
            build_args = {**build_args, "UV_CACHE_DIR": f"{ctr.CACHE_TARGET}/uv"}
        cmd += [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
        print(f"$ {' '.join(cmd)} {context}", flush=True)
        started = time.monotonic()
        ctr.run_engine([*cmd, str(context)], env, timeout=3600)
        return time.monotonic() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def postgres_available(cli: str, env: dict[str, str], pull_timeout_s: float) -> bool:
    ref = POSTGRES_OFFICIAL if cli == "docker" else ctr.qualified(POSTGRES_OFFICIAL)
    return ctr.image_exists(cli, ref, env) or ctr.pull(cli, ref, env, pull_timeout_s)


def build(backend: str = "auto", base: str = "auto", pull_timeout_s: float = 120) -> list[str]:
    env = ctr.engine_env()
    backend = ctr.pick_backend(backend, env)
    cli = ctr.cli_for(backend)
    base_ref = ctr.pick_base(backend, base, "python:3.11-slim", env, pull_timeout_s)
    built = []
    # the jobs image takes only the lock from the repository: a context of those two files,
    # not the working copy (its venv, data and state are gigabytes)
    with tempfile.TemporaryDirectory(dir=ctr.work_dir()) as context:
        for name in ("pyproject.toml", "uv.lock"):
            shutil.copy2(ROOT / name, context)
        seconds = build_image(backend, COMPOSE_DIR / "jobs.Containerfile", Path(context),
                              JOBS_IMAGE, {"BASE": base_ref}, env)  # fmt: skip
    print(f"built {JOBS_IMAGE} on {base_ref} in {seconds:.0f} s", flush=True)
    built.append(JOBS_IMAGE)
    if postgres_available(cli, env, pull_timeout_s):
        print(f"{POSTGRES_OFFICIAL} is here: compose uses it (POSTGRES_IMAGE unset)")
        return built
    if backend == "docker":
        raise RiskloopError(f"{POSTGRES_OFFICIAL} cannot be pulled and the offline stand-in is "
                            "built on the local base, which needs podman/buildah")  # fmt: skip
    local_base = ctr.pick_base(backend, "local", "python:3.11-slim", env, pull_timeout_s)
    seconds = build_image(backend, COMPOSE_DIR / "postgres.Containerfile", COMPOSE_DIR,
                          POSTGRES_LOCAL, {"BASE": local_base}, env)  # fmt: skip
    print(f"built {POSTGRES_LOCAL} in {seconds:.0f} s ({POSTGRES_OFFICIAL} cannot be pulled "
          f"here): put POSTGRES_IMAGE={POSTGRES_LOCAL} in deploy/compose/.env")  # fmt: skip
    built.append(POSTGRES_LOCAL)
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="riskloop compose-images", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--backend", default=os.environ.get("CONTAINER_BACKEND", "auto"),
                    help="auto | docker | podman | buildah (CONTAINER_BACKEND)")  # fmt: skip
    ap.add_argument("--base", default=os.environ.get("CONTAINER_BASE", "auto"),
                    help="auto | default | local (CONTAINER_BASE)")  # fmt: skip
    ap.add_argument("--pull-timeout", type=float, default=120, metavar="S",
                    help="seconds to try pulling a default image before building offline")  # fmt: skip
    args = ap.parse_args(argv)
    build(args.backend, args.base, args.pull_timeout)


if __name__ == "__main__":
    run_main(main)
