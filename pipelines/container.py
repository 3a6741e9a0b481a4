"""`make container`: the deployed bento (the champion's, as `make bento`/`make deploy` recorded
it) as an OCI image, built by `bentoml containerize`.

    riskloop container                        build riskloop:<bento version> and riskloop:latest
    riskloop container --base local          on the local Debian base (no registry needed)
    riskloop container --base-only           build the local base image and stop

Backend (`--backend`, CONTAINER_BACKEND): docker where an engine answers `docker info`, else
podman, else buildah. Base (`--base`, CONTAINER_BASE): BentoML's own default (the bento's
`python:3.11-slim`) where it is present or can be pulled, else the local base
localhost/riskloop-base:bookworm, made from Debian's packages (deploy/container/build-base.sh:
debootstrap + buildah, as root) and given to podman/buildah with `--from`. A metadata step
adds what BentoML's Dockerfile lacks: a HEALTHCHECK on /livez, labels naming the bento, the
model version, its MLflow run id and data md5, /home/bentoml/journal owned by the service's
user (where a volume for SPOOL_DIR goes), and defaults that let it run on a read-only root.
The image runs as BentoML's `bentoml` user (uid 1034).

Nothing secret is built in: the service is configured by the environment it is started with
(API_KEYS, DATABASE_URL, ...). What a build host needs to reach PyPI (its CA bundle, uv's
settings) is mounted into the RUN steps, never copied into a layer.

podman and buildah run with deploy/container/containers.conf and storage.conf unless
CONTAINERS_CONF / CONTAINERS_STORAGE_CONF say otherwise: runc, no default ulimits, images under
/var/tmp/riskloop-containers (root). /etc is never changed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import RiskloopError

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "deploy" / "container"
LOCAL_BASE = "localhost/riskloop-base:bookworm"
BACKENDS = ("docker", "podman", "buildah")
JOURNAL_DIR = "/home/bentoml/journal"
# python is the bento's venv (/app/.venv/bin, first on PATH); the port is PORT or BENTOML_PORT
# when the container is started with one (BentoML's entrypoint listens there), else 3000
HEALTHCHECK_PROBE = (
    "import os, urllib.request; "
    "port = os.environ.get('BENTOML_PORT') or os.environ.get('PORT') or '3000'; "
    "urllib.request.urlopen('http://127.0.0.1:' + port + '/livez', timeout=4)"
)
HEALTHCHECK = (
    "HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD "
    + json.dumps(["python", "-c", HEALTHCHECK_PROBE])
)
# Defaults that let the image run on a read-only root filesystem with only /tmp writable and
# the journal on a volume (every one can be overridden with -e): BentoML's home (it creates
# directories there at start; the bento and its models stay in /home/bentoml/bento), numba's
# cache (the exact-contribution kernels are compiled with cache=True, which needs a writable
# directory), and the prediction journal where a volume is meant to be mounted.
RUNTIME_ENV = {"BENTOML_HOME": "/tmp/bentoml", "NUMBA_CACHE_DIR": "/tmp/numba-cache",
               "SPOOL_DIR": JOURNAL_DIR}  # fmt: skip
# Build-time settings mounted over these paths during a build (the local base ships all three:
# deploy/container/build-base.sh), so a RUN step sees the build host's CA bundle and uv's
# settings and uses a persistent uv cache, and no layer keeps any of them
CA_TARGET = "/etc/ssl/certs/ca-certificates.crt"
UV_CONFIG_TARGET = "/etc/uv/uv.toml"
CACHE_TARGET = "/root/.cache"


def engine_env() -> dict[str, str]:
    """The environment every engine command runs in: the committed podman/buildah settings
    unless the caller chose their own."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONF_DIR / "containers.conf"))
    env.setdefault("CONTAINERS_STORAGE_CONF", str(CONF_DIR / "storage.conf"))
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def work_dir() -> Path:
    """Build scratch space and uv's download cache, beside the image storage."""
    default = (
        "/var/tmp/riskloop-containers" if os.geteuid() == 0 else "~/.cache/riskloop-containers"
    )
    path = Path(os.environ.get("RISKLOOP_CONTAINER_DIR", default)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_engine(cmd: list[str], env: dict[str, str], timeout: float | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, text=True, capture_output=True)
    except subprocess.TimeoutExpired as exc:
        raise RiskloopError(f"`{' '.join(cmd[:4])} …` took more than {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
        raise RiskloopError(f"`{' '.join(cmd[:4])} …` failed (exit {proc.returncode}):\n{out}")
    return proc


def _ok(cmd: list[str], env: dict[str, str], timeout: float = 30) -> bool:
    try:
        return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def docker_engine(env: dict[str, str]) -> bool:
    return shutil.which("docker") is not None and _ok(["docker", "info"], env, timeout=20)


def pick_backend(choice: str, env: dict[str, str]) -> str:
    """docker where an engine answers, else podman, else buildah (or the one asked for)."""
    if choice != "auto":
        if choice not in BACKENDS:
            raise RiskloopError(f"--backend {choice!r}: expected auto, {', '.join(BACKENDS)}")
        if shutil.which(choice) is None or (choice == "docker" and not docker_engine(env)):
            raise RiskloopError(f"--backend {choice}: {choice} is not installed or not running")
        return choice
    if docker_engine(env):
        return "docker"
    for backend in ("podman", "buildah"):
        if shutil.which(backend):
            return backend
    raise RiskloopError(
        "no container engine: neither `docker info` answers nor podman/buildah is installed "
        "(Debian, as root: `make tools` installs podman, buildah, runc and debootstrap)"
    )


def cli_for(backend: str) -> str:
    """The command that inspects and runs what `backend` built (buildah builds, podman runs)."""
    if backend == "buildah" and shutil.which("podman"):
        return "podman"
    return backend


def qualified(ref: str) -> str:
    """docker.io/library/python:3.11-slim for python:3.11-slim: podman has no short-name
    registry configured here, and an unqualified name would prompt or fail."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref if '/' in ref else 'library/' + ref}"


def image_exists(cli: str, ref: str, env: dict[str, str]) -> bool:
    if cli == "buildah":
        return _ok(["buildah", "inspect", "--type", "image", ref], env)
    if cli == "podman":
        return _ok(["podman", "image", "exists", ref], env)
    return _ok(["docker", "image", "inspect", ref], env)


def pull(cli: str, ref: str, env: dict[str, str], timeout_s: float) -> bool:
    cmd = [cli, "pull", "--quiet", ref] if cli != "docker" else ["docker", "pull", "-q", ref]
    print(f"pulling {ref} (at most {timeout_s:.0f} s) ...", flush=True)
    return _ok(cmd, env, timeout=timeout_s)


def pick_base(backend: str, choice: str, default_ref: str, env: dict[str, str],
              pull_timeout_s: float) -> str:  # fmt: skip
    """The base image: the default where it is present or pulls, else the local base (built
    first if missing)."""
    cli = cli_for(backend)
    ref = default_ref if backend == "docker" else qualified(default_ref)
    if choice in ("auto", "default"):
        if image_exists(cli, ref, env) or pull(cli, ref, env, pull_timeout_s):
            return ref
        if choice == "default":
            raise RiskloopError(f"the default base {ref} cannot be pulled here; "
                                "CONTAINER_BASE=local builds on a local Debian base instead")  # fmt: skip
        print(f"{ref} cannot be pulled: building on the local base {LOCAL_BASE}", flush=True)
    elif choice != "local":
        raise RiskloopError(f"--base {choice!r}: expected auto, default or local")
    if backend == "docker":
        raise RiskloopError(
            "the local base is given to the build with podman/buildah's --from; with Docker "
            "the default base must be pullable (or use CONTAINER_BACKEND=podman)"
        )
    if not image_exists(cli, LOCAL_BASE, env):
        build_base(env)
    return LOCAL_BASE


def build_base(env: dict[str, str]) -> str:
    """localhost/riskloop-base:bookworm from Debian's packages (deploy/container/build-base.sh:
    debootstrap + buildah, as root), with the uv binary riskloop locks."""
    missing = [t for t in ("debootstrap", "buildah") if shutil.which(t) is None]
    if missing:
        raise RiskloopError(f"the local base needs {' and '.join(missing)} "
                            "(Debian, as root: `make tools`)")  # fmt: skip
    if os.geteuid() != 0:
        raise RiskloopError("debootstrap needs root: run `make container-base` as root")
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise RiskloopError(f"{uv} missing: `make install` installs uv into the venv")
    started = time.monotonic()
    env = {**env, "RISKLOOP_CONTAINER_DIR": str(work_dir())}
    if subprocess.run([str(CONF_DIR / "build-base.sh"), str(uv), LOCAL_BASE], env=env).returncode:
        raise RiskloopError(f"building {LOCAL_BASE} failed (its output is above)")
    print(f"built {LOCAL_BASE} in {time.monotonic() - started:.0f} s", flush=True)
    return LOCAL_BASE


@dataclass(frozen=True)
class BentoFacts:
    tag: str
    version: str
    base_image: str  # the bento's own default base (BentoML's)
    model_tag: str
    model_labels: dict[str, str]


def bento_facts(tag: str) -> BentoFacts:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bento = bentoml.get(tag)
    except NotFound as exc:
        raise RiskloopError(f"no bento {tag}: run `make bento` first") from exc
    info = bento.info
    image = getattr(info, "image", None)
    refs = [m for svc in getattr(info, "services", []) for m in svc.models] or list(info.models)
    if not refs:
        raise RiskloopError(f"bento {bento.tag} carries no model")
    model = bentoml.models.get(refs[0].tag)
    return BentoFacts(str(bento.tag), bento.tag.version or "", image.base_image if image else
                      "python:3.11-slim", str(model.tag), dict(model.info.labels))  # fmt: skip


def current_bento() -> str:
    """The bento `make bento`/`make deploy` last recorded, else the newest one."""
    from serving import deployment

    record = deployment.read(stores.deployment_file())
    return record.bento if record else "riskloop:latest"


def image_labels(facts: BentoFacts, base_ref: str) -> dict[str, str]:
    labels = facts.model_labels
    return {
        "org.opencontainers.image.title": "riskloop",
        "org.opencontainers.image.description": "riskloop's credit-risk scoring service: "
        f"model v{labels.get('registry_version', '?')} in bento {facts.tag}",
        "org.opencontainers.image.version": facts.version,  # the bento's, as the image tag
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": base_ref,
        "ai.riskloop.bento": facts.tag,
        "ai.riskloop.model.tag": facts.model_tag,
        "ai.riskloop.model.version": labels.get("registry_version", ""),
        "ai.riskloop.model.run_id": labels.get("run_id", ""),
        "ai.riskloop.data.md5": labels.get("data_hash", ""),
        "ai.riskloop.contract.sha": labels.get("contract_sha", ""),
    }


def build_mounts(scratch: Path) -> list[str]:
    """podman/buildah `--volume`s for the RUN steps: the host's CA bundle (a proxy that
    re-signs TLS, a mirror with a private CA), uv set to trust it and never download a
    Python, and a persistent uv cache. Each target exists in the local base, so no empty
    mount point is left in a layer either."""
    uv_toml = scratch / "uv.toml"
    # the venv uses the base's Python 3.11; the cache is a mount, so copy rather than hardlink
    lines = ['python-downloads = "never"', 'link-mode = "copy"']
    cafile = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
    mounts = []
    if cafile and Path(cafile).is_file():
        lines.append("system-certs = true")
        mounts.append(f"{Path(cafile).resolve()}:{CA_TARGET}:ro")
    for var, key in (("UV_INDEX_URL", "index-url"), ("UV_DEFAULT_INDEX", "index-url")):
        if os.environ.get(var):
            lines.append(f"{key} = {json.dumps(os.environ[var])}")
            break
    uv_toml.write_text("\n".join(lines) + "\n")
    cache = work_dir() / "uv-cache"
    cache.mkdir(exist_ok=True)
    return [*mounts, f"{uv_toml}:{UV_CONFIG_TARGET}:ro", f"{cache}:{CACHE_TARGET}"]


def containerize(facts: BentoFacts, backend: str, base_ref: str, tag: str,
                 env: dict[str, str], scratch: Path) -> str:  # fmt: skip
    """`bentoml containerize` on `base_ref`, through the Python API its CLI calls
    (`bentoml.container.build`): the CLI joins repeated `--opt volume=` values into one
    colon-separated string podman cannot read. Returns the image id."""
    from bentoml import container as bentoml_container

    iidfile = scratch / "iid"
    opts: dict[str, object] = {"iidfile": str(iidfile)}
    if backend in ("podman", "buildah"):
        opts.update({"from": base_ref, "network": "host", "layers": True, "format": "docker",
                     "volume": build_mounts(scratch)})  # fmt: skip
    shown = " ".join(f"--opt {k}" + ("" if v is True else f"={v}")
                     for k, v in opts.items() if k != "volume")  # fmt: skip
    shown += "".join(f" --opt volume={v}" for v in opts.get("volume", []))  # type: ignore[union-attr]
    print(f"$ bentoml containerize {facts.tag} --backend {backend} -t {tag} {shown}", flush=True)
    saved = dict(os.environ)
    os.environ.update(env)  # the engine runs in this process's environment
    try:
        bentoml_container.build(facts.tag, backend=backend, image_tag=(tag,), **opts)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # BentoML logs a failed build and returns: the image id file says whether it worked
    image_id = iidfile.read_text().strip() if iidfile.exists() else ""
    if not image_id:
        raise RiskloopError(f"`bentoml containerize {facts.tag}` failed (its output is above)")
    return image_id


def finalize(cli: str, image_id: str, labels: dict[str, str], tags: list[str],
             env: dict[str, str], scratch: Path) -> None:  # fmt: skip
    """The HEALTHCHECK and labels BentoML's Dockerfile has no place for, and the journal
    directory; docker format, since OCI image configs have no HEALTHCHECK."""
    lines = [
        f"FROM {image_id}",
        f"RUN mkdir -p -m 0700 {JOURNAL_DIR}",
        HEALTHCHECK,
        "ENV " + " ".join(f"{k}={v}" for k, v in RUNTIME_ENV.items()),
    ]
    lines += [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]
    ctx = scratch / "finalize"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("\n".join(lines) + "\n")
    cmd = [cli, "build", "-f", str(ctx / "Containerfile")]
    if cli != "docker":
        cmd += ["--format", "docker", "--network", "none"]
    if cli == "podman":
        cmd += ["--pull=never"]
    for tag in tags:
        cmd += ["-t", tag]
    run_engine([*cmd, str(ctx)], env, timeout=900)


def inspect(cli: str, ref: str, env: dict[str, str]) -> dict | None:
    """The image's config as docker/podman `image inspect` give it (Labels, User, Env,
    Healthcheck), its id and size; None when there is no such image."""
    if cli == "buildah":
        proc = run_engine(["buildah", "inspect", "--type", "image", ref], env, check=False)
        if proc.returncode != 0:
            return None
        doc = json.loads(proc.stdout)
        config = dict(doc.get("Docker", {}).get("config") or {})
        return {"Id": doc.get("FromImageID", ""), "Size": None, "Config": config}
    proc = run_engine([cli, "image", "inspect", ref], env, check=False)
    if proc.returncode != 0:
        return None
    doc = json.loads(proc.stdout)[0]
    config = dict(doc.get("Config") or {})
    # podman reports the healthcheck beside the config, docker inside it
    config["Healthcheck"] = (config.get("Healthcheck") or doc.get("Healthcheck")
                             or doc.get("HealthCheck"))  # fmt: skip
    return {"Id": doc.get("Id", ""), "Size": doc.get("Size"), "Config": config}


def drop_if_untagged(cli: str, image_id: str, env: dict[str, str]) -> None:
    """Remove the image `latest` pointed at before, once no tag names it: its own layers go,
    the layers it shares with the new image (the build cache) stay."""
    if cli == "buildah":  # no podman to run it either: leave the store as it is
        return
    proc = run_engine([cli, "image", "inspect", "--format", "{{json .RepoTags}}", image_id], env,
                check=False)  # fmt: skip
    if proc.returncode == 0 and not json.loads(proc.stdout.strip() or "null"):
        run_engine([cli, "rmi", image_id], env, check=False)


@dataclass(frozen=True)
class BuiltImage:
    image: str  # name:<bento version>
    image_id: str
    bento: str
    model_version: str
    backend: str
    base: str  # default | local
    base_image: str
    size_bytes: int | None
    build_seconds: float | None  # None: an image of this bento already existed
    built_at: str


def image_record_file() -> Path:
    return stores.state_dir() / "deploy" / "image.json"


def build(bento: str | None = None, backend: str = "auto", base: str = "auto",
          name: str = "riskloop", rebuild: bool = False, pull_timeout_s: float = 120) -> BuiltImage:  # fmt: skip
    env = engine_env()
    facts = bento_facts(bento or current_bento())
    backend = pick_backend(backend, env)
    cli = cli_for(backend)
    ref = f"{name}:{facts.version}"
    existing = None if rebuild else inspect(cli, ref, env)
    labels_now = (existing or {}).get("Config", {}).get("Labels") or {}
    base_now = labels_now.get("org.opencontainers.image.base.name", "")
    reuse = labels_now.get("ai.riskloop.bento") == facts.tag and (
        base == "auto" or (base_now == LOCAL_BASE) == (base == "local")
    )
    started = time.monotonic()
    if reuse:
        base_ref = base_now
        print(f"{ref} already holds {facts.tag} (on {base_ref}): not rebuilt (--rebuild does)")
        seconds = None
    else:
        base_ref = pick_base(backend, base, facts.base_image, env, pull_timeout_s)
        print(f"building {ref} from bento {facts.tag} (model v"
              f"{facts.model_labels.get('registry_version', '?')}) with {backend} on {base_ref}",
              flush=True)  # fmt: skip
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=work_dir()))
        previous = (inspect(cli, f"{name}:latest", env) or {}).get("Id")
        try:
            image_id = containerize(facts, backend, base_ref, ref, env, scratch)
            finalize(cli, image_id, image_labels(facts, base_ref), [ref, f"{name}:latest"], env,
                     scratch)  # fmt: skip
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        seconds = round(time.monotonic() - started, 1)
        if previous:
            drop_if_untagged(cli, previous, env)
    final = inspect(cli, ref, env)
    if final is None:
        raise RiskloopError(f"{ref} is missing after the build")
    built = BuiltImage(
        image=ref, image_id=final["Id"], bento=facts.tag,
        model_version=facts.model_labels.get("registry_version", ""), backend=backend,
        base="local" if base_ref == LOCAL_BASE else "default", base_image=base_ref,
        size_bytes=final["Size"], build_seconds=seconds,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    record = image_record_file()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(built), indent=2) + "\n")
    size = f", {built.size_bytes / 1e6:.0f} MB" if built.size_bytes else ""
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"built {ref} (also {name}:latest){took}{size}; recorded in {record}")
    print(_run_hint(cli, name))
    return built


def _run_hint(cli: str, name: str) -> str:
    conf = ""
    if cli != "docker":
        conf = (f"CONTAINERS_CONF={CONF_DIR / 'containers.conf'} "
                f"CONTAINERS_STORAGE_CONF={CONF_DIR / 'storage.conf'} \\\n  ")  # fmt: skip
    return (f"run it:\n  {conf}{cli} run -d -p 127.0.0.1:3000:3000 -e API_KEYS=change-me "
            f"-e DATABASE_URL=postgresql+psycopg2://... \\\n  --read-only --tmpfs /tmp "
            f"-v riskloop-journal:{JOURNAL_DIR} {name}:latest\n(deploy/container/README.md says more)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="riskloop container", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bento", help="bento tag (default: the deployment record's, else riskloop:latest)"
    )
    ap.add_argument(
        "--backend",
        default=os.environ.get("CONTAINER_BACKEND", "auto"),
        help="auto | docker | podman | buildah (CONTAINER_BACKEND)",
    )
    ap.add_argument(
        "--base",
        default=os.environ.get("CONTAINER_BASE", "auto"),
        help="auto | default | local (CONTAINER_BASE)",
    )
    ap.add_argument(
        "--image", default="riskloop", help="image name (tags: <bento version>, latest)"
    )
    ap.add_argument("--rebuild", action="store_true", help="build even if the image exists")
    ap.add_argument(
        "--pull-timeout",
        type=float,
        default=120,
        help="seconds to try pulling the default base before falling back",
    )
    ap.add_argument(
        "--base-only",
        action="store_true",
        help=f"build the local base {LOCAL_BASE} (again) and stop",
    )
    args = ap.parse_args(argv)  # fmt: skip
    if args.base_only:
        build_base(engine_env())
        return
    build(args.bento, args.backend, args.base, args.image, args.rebuild, args.pull_timeout)


if __name__ == "__main__":
    run_main(main)
