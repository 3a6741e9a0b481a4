"""The serving container's figures: image size, build time for a new bento, and cold start
to ready — the container (read-only root, journal volume, SQLite in its /tmp) beside its
peer, the same bento served by `bentoml serve` on this host, in the same run, alternated.

    make bench-container BENCH_ARGS="[--starts 3] [--rebuild] [--no-write]"

Uses the deployed bento (`make bento` / `make deploy`) and `riskloop container`'s engine."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.results import write_section
from pipelines import container
from tests.serving.server import free_port

KEY = "bench-container-key"


def until_ready(url: str, alive, timeout_s: float = 300) -> float:
    begun = time.monotonic()
    while time.monotonic() - begun < timeout_s:
        if not alive():
            raise RuntimeError(f"exited before {url}/readyz answered")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - begun
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def container_start(cli: str, ref: str, env: dict[str, str]) -> float:
    port, name = free_port(), f"bench-{uuid.uuid4().hex[:8]}"
    volume = f"bench-journal-{uuid.uuid4().hex[:8]}"
    cmd = [cli, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:3000",
           "-v", f"{volume}:{container.JOURNAL_DIR}", "-e", f"API_KEYS={KEY}", "-e", "ENVIRONMENT=production",
           "-e", "DATABASE_URL=sqlite:////tmp/p.db", ref]  # fmt: skip
    begun = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    def alive() -> bool:
        out = subprocess.run([cli, "inspect", "--format", "{{.State.Running}}", name], env=env,
                             capture_output=True, text=True).stdout  # fmt: skip
        return out.strip() == "true"

    try:
        until_ready(f"http://127.0.0.1:{port}", alive)
        return time.monotonic() - begun
    finally:
        subprocess.run([cli, "rm", "-f", "-t", "5", name], env=env, capture_output=True)
        subprocess.run([cli, "volume", "rm", "-f", volume], env=env, capture_output=True)


def host_start(bento: str) -> float:
    """The peer: the same bento by `bentoml serve` here, on its own SQLite store."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "API_KEYS": KEY, "DATABASE_URL": f"sqlite:///{tmp}/p.db",
               "SPOOL_DIR": f"{tmp}/spool", "RISKLOOP_STATE_DIR": tmp, "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
        begun = time.monotonic()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", bento,
                                 "--port", str(port), "--host", "127.0.0.1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            until_ready(f"http://127.0.0.1:{port}", lambda: proc.poll() is None)
            return time.monotonic() - begun
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true", help="time a build of the image again")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    built = container.build(rebuild=args.rebuild)
    cli, env = container.cli_for(built.backend), container.engine_env()
    in_container, on_host = [], []
    for _ in range(args.starts):  # alternated: the machine's load falls on both alike
        in_container.append(container_start(cli, built.image, env))
        on_host.append(host_start(built.bento))
    med_c, med_h = statistics.median(in_container), statistics.median(on_host)
    body = f"""## Serving container (issue 14)

`python -m bench.container --starts {args.starts}{" --rebuild" if args.rebuild else ""}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, 2 shared cores.
Image `{built.image}` of bento `{built.bento}` (model v{built.model_version}), built with {built.backend} on `{built.base_image}`.

| | value |
|---|---|
| image size | {built.size_bytes / 1e6:,.0f} MB (serving set only; the whole lock gave 2,043 MB on the same base) |
| build{" (this run, --rebuild: the same bento again, base and layers cached)" if built.build_seconds else ""} | {f"{built.build_seconds:.0f} s" if built.build_seconds else "not rebuilt in this run"} |
| cold start to `/readyz` 200, container (`run -d` → ready; read-only root, journal volume) | median {med_c:.1f} s ({", ".join(f"{x:.1f}" for x in in_container)}) |
| cold start to `/readyz` 200, same bento by `bentoml serve` on the host (peer) | median {med_h:.1f} s ({", ".join(f"{x:.1f}" for x in on_host)}) |
| ratio container / host | {med_c / med_h:.2f}x |

Most of a start is the model's load and its golden-batch checks (numba compiles the TreeSHAP
tables at load), the same in both; the container adds its runtime's start and, on a read-only
root, numba's cache in a fresh tmpfs. A cold build from nothing (no base image, no layer
cache) took 134 to 194 s here, 70 to 84 s of it the local Debian base (deploy/container/README.md).
"""
    print(body)
    if not args.no_write:
        write_section("container", body)


if __name__ == "__main__":
    main()
