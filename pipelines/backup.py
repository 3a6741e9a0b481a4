"""`make backup` / `make restore`: copies of every store riskloop keeps state in, and a tested
way back.

    riskloop backup create [--keep N] [--max-age-days D]   a new backup (then prune)
    riskloop backup list                                   backups, newest first
    riskloop backup prune --keep N [--max-age-days D]      apply the retention policy
    riskloop backup restore [NAME] [--to-… …] [--force]    latest successful by default

A backup is a directory BACKUP_DIR/<UTC time>/ (RISKLOOP_BACKUP_DIR, default backups/ beside
the state directory, so losing the state does not lose its backups) holding one file per part
and manifest.json: what was copied, from where (passwords redacted), sizes, sha256 of each
file, row counts of the key tables, the riskloop commit, start, end and duration. Parts:

- predictions: the prediction store (DATABASE_URL; SQLite by default);
- mlflow: MLflow's backend store (MLFLOW_TRACKING_URI), then mlartifacts: its artifact root
  (models, reports) as a tar; the database first, so every artifact it names is in the tar;
- optuna: the Optuna storage (OPTUNA_STORAGE);
- dvc: the default DVC remote when it is a local directory, else the DVC cache, as a tar,
  recorded with data.dvc's md5 and whether that data is in it.

SQLite stores are copied with SQLite's online backup API and PostgreSQL with `pg_dump
--format=custom`: both are one consistent snapshot while the service keeps writing. Rows
committed before a backup starts are in it; rows committed while it runs may or may not be;
rows still in the service's journal (answered, not yet flushed) are not.

`restore` checks every file's sha256 first, then writes into the stores the environment names
(the same variables) or `--to-…` options, refuses any target that is not empty unless
`--force`, and reports row counts against the manifest's. Parts are restored one after
another, each database whole or not at all (one pg_restore transaction, one SQLite backup
step); `--force` replaces what a backup holds and leaves anything else in the target. MLflow's absolute artifact
locations are moved to the target's artifact root. A tracking server (http://) is backed up
through its own stores when MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION name
them (`make stack` writes both into its env file); any other server is skipped with a note:
back up its database and artifact store where it runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from riskloop import archive, stores
from riskloop.cli import run_main
from riskloop.errors import RiskloopError

PARTS = ("predictions", "mlflow", "mlartifacts", "optuna", "dvc")
DB_PARTS = ("predictions", "mlflow", "optuna")
# Tables whose row counts go into the manifest and are checked after a restore.
KEY_TABLES: dict[str, tuple[str, ...]] = {
    "predictions": ("predictions", "outcomes", "interventions", "online_features", "monitoring_runs"),
    "mlflow": ("experiments", "runs", "registered_models", "model_versions", "registered_model_aliases",
               "model_version_tags", "registered_model_tags", "logged_models"),
    "optuna": ("studies", "trials", "trial_values"),
}  # fmt: skip
# Columns in which MLflow keeps absolute artifact locations (moved on restore).
MLFLOW_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                    ("model_versions", "source"))  # fmt: skip
MANIFEST = "manifest.json"
FORMAT = 1
_NAME = re.compile(r"^(\d{8}T\d{6}Z)(-\d+)?$")
_STAMP = "%Y%m%dT%H%M%SZ"


class BackupError(RiskloopError):
    """A backup or restore cannot go ahead; the message says why and what to do."""


# --- where the stores are -----------------------------------------------------------------


@dataclass(frozen=True)
class Locations:
    """Every store's address: database URLs, directories (None: there is none to copy)."""

    predictions: str
    mlflow: str | None  # None: a tracking server owns its store
    mlartifacts: Path | None
    optuna: str
    dvc_remote: Path | None  # the default DVC remote, when it is a local directory
    dvc_cache: Path | None


def _dvc_dirs(root: Path) -> tuple[Path | None, Path | None]:
    if not (root / ".dvc").is_dir():
        return None, None
    from dvc.repo import Repo  # slow import, needed only here

    with Repo(str(root)) as repo:
        cache = Path(repo.cache.local_cache_dir) if repo.cache.local_cache_dir else None
        name = repo.config["core"].get("remote")
        url = str(repo.config["remote"].get(name, {}).get("url", "")) if name else ""
    local = url and ("://" not in url or url.startswith("file://"))
    return (Path(url.removeprefix("file://")) if local else None), cache


def locate(to: Mapping[str, str | None] | None = None) -> Locations:
    """The stores the environment names (as the service and the pipeline resolve them), with
    explicit overrides (`--to-…` options) taking precedence."""
    from serving.config import ServingEnv

    to = {k: v for k, v in (to or {}).items() if v}
    env = stores.StoreEnv()
    tracking = to.get("mlflow") or stores.tracking_uri(env)
    server = stores.is_tracking_server(tracking)
    artifacts = to.get("mlartifacts") or (None if server else stores.state_dir(env) / "mlartifacts")
    if server and env.mlflow_backend_store_uri:  # a server riskloop runs: its own stores
        tracking, server = env.mlflow_backend_store_uri, False
        artifacts = artifacts or env.mlflow_artifacts_destination
    remote, cache = _dvc_dirs(stores.project_root())
    return Locations(
        predictions=stores.normalize_db_url(to["predictions"], "--to-database-url")
        if "predictions" in to else ServingEnv().store_url(),
        mlflow=None if server else stores.normalize_db_url(tracking, "MLFLOW_TRACKING_URI"),
        mlartifacts=Path(artifacts).resolve() if artifacts else None,
        optuna=stores.normalize_db_url(to["optuna"], "--to-optuna-storage")
        if "optuna" in to else stores.optuna_storage(env),
        # --to-dvc: wherever the backup came from (remote or cache), it goes there
        dvc_remote=Path(to["dvc"]).resolve() if "dvc" in to else remote,
        dvc_cache=Path(to["dvc"]).resolve() if "dvc" in to else cache,
    )  # fmt: skip


# --- pure planning ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One part of a backup or restore: `kind` sqlite | postgresql | tar | shared | skipped."""

    part: str
    kind: str
    where: str  # the store's URL or directory (source on backup, target on restore)
    file: str | None = None  # the part's file in the backup directory
    note: str = ""
    shared_with: str | None = None  # the part whose file holds this one's database
    tables: tuple[str, ...] = ()  # tables counted (on restore: those the manifest counted)


def _db_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _suffix(kind: str) -> str:
    return {"sqlite": ".sqlite", "postgresql": ".pgdump", "tar": ".tar"}[kind]


def plan_backup(loc: Locations, only: Collection[str] = PARTS,
                exists: Callable[[Path], bool] = Path.exists) -> list[Step]:  # fmt: skip
    """What a backup copies, part by part. A database that another part already copies (one
    PostgreSQL database for several stores) is copied once; a missing SQLite file or
    directory is skipped with the reason."""
    steps: list[Step] = []
    sharing: dict[str, list[str]] = {}  # url -> the parts kept in that database
    for part in DB_PARTS:
        if part in only and getattr(loc, part) is not None:
            sharing.setdefault(getattr(loc, part), []).append(part)
    for part in PARTS:
        if part not in only:
            continue
        if part in DB_PARTS:
            url = getattr(loc, part)
            if url is None:
                why = "a tracking server keeps its own store"
                steps.append(Step(part, "skipped", "", note=why))
                continue
            kind, first = _db_kind(url), sharing[url][0]
            if kind == "sqlite" and not exists(archive.sqlite_path(url)):
                steps.append(Step(part, "skipped", url, note="no database file yet"))
            elif first != part:
                steps.append(Step(part, "shared", url, shared_with=first))
            else:
                tables = tuple(t for p in sharing[url] for t in KEY_TABLES[p])
                steps.append(Step(part, kind, url, file=part + _suffix(kind), tables=tables))
            continue
        if part == "mlartifacts":
            folder, what, missing = loc.mlartifacts, "", "a tracking server keeps its own artifacts"
        else:
            remote = loc.dvc_remote is not None and exists(loc.dvc_remote)
            folder, what = (loc.dvc_remote, "remote") if remote else (loc.dvc_cache, "cache")
            missing = "no local DVC remote or cache"
        if folder is None or not exists(folder):
            why = missing if folder is None else "no such directory"
            steps.append(Step(part, "skipped", str(folder or ""), note=why))
        else:
            steps.append(Step(part, "tar", str(folder), file=f"{part}.tar", note=what))
    return steps


def plan_restore(manifest: Mapping[str, Any], loc: Locations,
                 only: Collection[str] = PARTS) -> list[Step]:  # fmt: skip
    """Where each part of a backup goes. A database part goes into the same kind of store it
    came from (no conversion between SQLite and PostgreSQL); a part the backup shared with
    another is skipped when the targets are shared too, else restored from that part's file."""
    parts = manifest["parts"]
    steps: list[Step] = []
    for part in PARTS:
        rec = parts.get(part)
        if part not in only or rec is None or rec["kind"] == "skipped":
            continue
        if part in DB_PARTS:
            target = getattr(loc, part)
            if target is None:
                raise BackupError(f"{part}: the target is a tracking server; give --to-mlflow-uri")
            owner = rec.get("shared_with")
            src = parts[owner] if owner else rec
            if owner and owner in only and getattr(loc, owner) == target:
                steps.append(Step(part, "shared", target, shared_with=owner))
                continue
            if _db_kind(target) != src["kind"]:
                raise BackupError(
                    f"{part}: the backup holds a {src['kind']} database, the target "
                    f"{redact(target)} is {_db_kind(target)}; restore into the same kind of store"
                )
            steps.append(Step(part, src["kind"], target, file=src["file"], shared_with=owner,
                              tables=tuple(src.get("rows", {}))))  # fmt: skip
            continue
        if part == "mlartifacts":
            folder = loc.mlartifacts
        else:
            folder = loc.dvc_remote if rec.get("dvc") == "remote" else loc.dvc_cache
        if folder is None:
            raise BackupError(
                f"{part}: no target directory; give --to-{'artifacts' if part == 'mlartifacts' else 'dvc'}"
            )
        steps.append(Step(part, "tar", str(folder), file=rec["file"], note=rec.get("dvc", "")))
    return steps


@dataclass(frozen=True)
class BackupInfo:
    name: str
    started_at: datetime
    ok: bool  # finished with every part copied (status ok)


def to_prune(backups: Sequence[BackupInfo], keep: int | None, max_age_days: float | None,
             now: datetime) -> list[str]:  # fmt: skip
    """Names of backups a retention policy deletes. Successful ones are kept when among the
    newest `keep` or younger than `max_age_days` (either suffices; a policy not given keeps
    nothing by itself; no policy at all deletes nothing); the newest successful one is always
    kept. Failed or unfinished ones never count towards `keep`: they go once a newer backup
    succeeded, and are kept otherwise (one may still be running)."""
    if keep is None and max_age_days is None:
        return []
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1")
    ordered = sorted(backups, key=lambda b: (b.started_at, b.name), reverse=True)
    good = [b for b in ordered if b.ok]
    kept = {b.name for b in good[: max(keep or 0, 1)]}
    if max_age_days is not None:
        kept |= {b.name for b in good if now - b.started_at < timedelta(days=max_age_days)}
    newest_ok = good[0].started_at if good else None
    doomed = [b.name for b in good if b.name not in kept]
    doomed += [
        b.name for b in ordered if not b.ok and newest_ok is not None and b.started_at < newest_ok
    ]
    return sorted(doomed)


def choose(backups: Sequence[BackupInfo], name: str | None) -> BackupInfo:
    """The backup to restore: `name`, or the newest successful one."""
    if name:
        found = next((b for b in backups if b.name == name), None)
        if found is None:
            raise BackupError(f"no backup named {name!r} (`riskloop backup list`)")
        if not found.ok:
            raise BackupError(f"backup {name} did not finish successfully: choose another")
        return found
    good = sorted((b for b in backups if b.ok), key=lambda b: (b.started_at, b.name))
    if not good:
        raise BackupError("no successful backup to restore (`riskloop backup create`)")
    return good[-1]


def redact(where: str) -> str:
    return stores.redact(where) if "://" in where else where


# --- I/O: backups on disk -----------------------------------------------------------------


def backup_dir(arg: Path | None) -> Path:
    configured = arg or os.environ.get("RISKLOOP_BACKUP_DIR")
    return Path(configured or stores.project_root() / "backups").expanduser().resolve()


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path / MANIFEST)  # a reader never sees half a manifest


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def scan(root: Path) -> list[BackupInfo]:
    """Backups under `root`; directories not named like one are never touched."""
    found = []
    for path in sorted(root.iterdir()) if root.exists() else []:
        match = _NAME.match(path.name)
        if not path.is_dir() or not match:
            continue
        manifest = read_manifest(path) or {}
        started = manifest.get("started_at")
        at = (
            datetime.fromisoformat(started)
            if started
            else datetime.strptime(match[1], _STAMP).replace(tzinfo=UTC)
        )
        found.append(BackupInfo(path.name, at, manifest.get("status") == "ok"))
    return found


def _data_md5(root: Path) -> str | None:
    dvc_file = root / "data.dvc"
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def _holds(folder: Path, md5: str | None) -> bool:
    """DVC 3 keeps an object (remote and cache alike) at files/md5/<2 chars>/<rest>."""
    return bool(md5) and (folder / "files" / "md5" / md5[:2] / md5[2:]).exists()


def _copy(step: Step, dst: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": step.kind, "source": redact(step.where)}
    if step.note:
        rec["dvc" if step.part == "dvc" else "note"] = step.note  # dvc: "remote" or "cache"
    if step.shared_with:
        rec["shared_with"] = step.shared_with
    if step.file is None:
        return rec
    t0 = time.monotonic()
    out = dst / step.file
    if step.kind == "sqlite":
        rec["rows"] = archive.sqlite_backup(step.where, out, step.tables)
    elif step.kind == "postgresql":
        rec["rows"] = archive.pg_dump(step.where, out, step.tables)
    else:
        rec.update(archive.tar_dir(Path(step.where), out))
        archive.private_file(out)
        if step.part == "mlartifacts":
            rec["root_uri"] = Path(step.where).as_uri()
        if step.part == "dvc":
            md5 = _data_md5(stores.project_root())
            rec.update(data_md5=md5, contains_data=_holds(Path(step.where), md5))
    rec.update(file=step.file, bytes=out.stat().st_size, sha256=archive.sha256_file(out),
               seconds=round(time.monotonic() - t0, 3))  # fmt: skip
    return rec


def create(root: Path, only: Collection[str] = PARTS, loc: Locations | None = None) -> Path:
    """One backup of every store; its directory. The manifest says `running` until the end,
    then `ok`, or `failed` with the error (and the exception goes on)."""
    from training.tracking import git_commit

    loc = loc or locate()
    steps = plan_backup(loc, only)
    started = datetime.now(UTC)
    root.mkdir(parents=True, exist_ok=True)
    name, n = started.strftime(_STAMP), 0
    while (root / name).exists():
        n += 1
        name = f"{started.strftime(_STAMP)}-{n}"
    path = root / name
    path.mkdir(mode=0o700)
    manifest: dict[str, Any] = {"format": FORMAT, "name": name, "status": "running",
                                "started_at": started.isoformat(), "riskloop_commit": git_commit(),
                                "host": socket.gethostname(), "parts": {}}  # fmt: skip
    _write_manifest(path, manifest)
    t0 = time.monotonic()
    try:
        for step in steps:
            manifest["parts"][step.part] = _copy(step, path)
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        manifest["status"] = "ok"
    finally:
        manifest.update(finished_at=datetime.now(UTC).isoformat(),
                        duration_s=round(time.monotonic() - t0, 3),
                        bytes=sum(p.get("bytes", 0) for p in manifest["parts"].values()))  # fmt: skip
        _write_manifest(path, manifest)
    return path


def prune(
    root: Path, keep: int | None, max_age_days: float | None, dry_run: bool = False
) -> list[str]:
    doomed = to_prune(scan(root), keep, max_age_days, datetime.now(UTC))
    for name in doomed if not dry_run else []:
        shutil.rmtree(root / name)
    return doomed


def verify(path: Path, manifest: Mapping[str, Any], steps: Sequence[Step]) -> None:
    """Every file a restore will read matches its manifest's sha256 (before anything is written)."""
    wanted = {s.file for s in steps if s.file}
    bad = [f for f in sorted(wanted)
           if not (path / f).exists() or archive.sha256_file(path / f) != next(
               p["sha256"] for p in manifest["parts"].values() if p.get("file") == f)]  # fmt: skip
    if bad:
        raise BackupError(
            f"backup {path.name}: {', '.join(bad)} missing or not matching the manifest's sha256"
        )


def _not_empty(step: Step) -> bool:
    if step.kind in ("sqlite", "postgresql"):
        return not archive.is_empty(step.where)
    return step.kind == "tar" and not archive.dir_is_empty(Path(step.where))


def restore(
    path: Path, loc: Locations, only: Collection[str] = PARTS, force: bool = False
) -> dict[str, Any]:
    """Restore backup `path` into `loc`; a report: per part target, rows (or files) restored
    against the manifest's, seconds."""
    manifest = read_manifest(path)
    if manifest is None or manifest.get("status") != "ok":
        raise BackupError(f"{path} is not a successful backup")
    steps = plan_restore(manifest, loc, only)
    verify(path, manifest, steps)
    occupied = [s for s in steps if _not_empty(s)]
    if occupied and not force:
        raise BackupError("not empty, refusing to overwrite (--force to restore over them): "
                          + "; ".join(f"{s.part} at {redact(s.where)}" for s in occupied))  # fmt: skip
    report: dict[str, Any] = {"backup": path.name, "parts": {}}
    t_all = time.monotonic()
    for step in steps:
        t0, src = time.monotonic(), path / (step.file or "")
        expected = manifest["parts"][step.shared_with or step.part] if step.kind != "shared" else {}
        if step.kind == "sqlite":
            got = archive.sqlite_restore(src, step.where, step.tables)
        elif step.kind == "postgresql":
            got = archive.pg_restore(src, step.where, step.tables, replace=force)
        elif step.kind == "tar":
            got = archive.untar(src, Path(step.where), overwrite=force)
        else:
            got = {}
        want = expected.get("rows") if step.kind in ("sqlite", "postgresql") else \
            {k: expected[k] for k in ("files", "content_bytes") if k in expected}  # fmt: skip
        if step.kind != "shared" and got != want:
            raise BackupError(f"{step.part}: restored {got}, the manifest says {want}")
        entry = {"target": redact(step.where), "kind": step.kind, "restored": got,
                 "seconds": round(time.monotonic() - t0, 3)}  # fmt: skip
        if step.part == "dvc":
            entry["contains_data"] = _holds(
                Path(step.where), manifest["parts"]["dvc"].get("data_md5")
            )
        report["parts"][step.part] = entry
    # MLflow names artifacts by absolute URI: point the restored store at the target's root.
    old_root = manifest["parts"].get("mlartifacts", {}).get("root_uri")
    new_root = loc.mlartifacts.as_uri() if loc.mlartifacts else None
    if (
        old_root
        and new_root
        and new_root != old_root
        and loc.mlflow
        and "mlflow" in report["parts"]
    ):
        moved = archive.replace_prefix(loc.mlflow, MLFLOW_LOCATIONS, old_root, new_root)
        report["parts"]["mlflow"]["artifact_locations_moved"] = moved
    report["seconds"] = round(time.monotonic() - t_all, 3)
    return report


# --- CLI ----------------------------------------------------------------------------------


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dir", type=Path, help="where backups live (RISKLOOP_BACKUP_DIR; default backups/)"
    )
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="back up every store, then prune if a policy is given")
    p = sub.add_parser("prune", help="delete backups the retention policy does not keep")
    for sp in (c, p):
        sp.add_argument("--keep", type=int, help="keep the newest N successful backups")
        sp.add_argument(
            "--max-age-days", type=float, help="keep successful backups younger than D days"
        )
    p.add_argument("--dry-run", action="store_true")
    sub.add_parser("list", help="backups, newest first")
    r = sub.add_parser("restore", help="restore a backup (default: the latest successful one)")
    r.add_argument("name", nargs="?")
    r.add_argument("--force", action="store_true", help="restore over targets that are not empty")
    r.add_argument("--json", action="store_true", help="the report as one JSON document")
    r.add_argument("--to-database-url", help="prediction store (default: DATABASE_URL)")
    r.add_argument("--to-mlflow-uri", help="MLflow backend store (default: MLFLOW_TRACKING_URI)")
    r.add_argument(
        "--to-artifacts", help="MLflow artifact root directory (default: state/mlartifacts)"
    )
    r.add_argument("--to-optuna-storage", help="Optuna storage (default: OPTUNA_STORAGE)")
    r.add_argument("--to-dvc", help="DVC remote or cache directory (default: as backed up)")
    for sp in (c, r):
        sp.add_argument(
            "--only", action="append", choices=PARTS, help="only this part (repeatable)"
        )
    return ap.parse_args(argv)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> None:
    args = _args(argv)
    root = backup_dir(args.dir)
    if args.command == "create":
        path = create(root, args.only or PARTS)
        manifest = read_manifest(path) or {}
        for part, rec in manifest["parts"].items():
            detail = rec.get("note", "") if rec["kind"] in ("skipped", "shared") else \
                f"{_mb(rec['bytes'])} in {rec['seconds']:.1f} s {rec.get('rows', '')}"  # fmt: skip
            print(f"  {part:<12} {rec['kind']:<10} {rec['source']}  {detail}")
        print(f"backup {path}: {_mb(manifest['bytes'])} in {manifest['duration_s']:.1f} s")
        if args.keep is not None or args.max_age_days is not None:
            print(f"pruned: {', '.join(prune(root, args.keep, args.max_age_days)) or 'none'}")
    elif args.command == "prune":
        doomed = prune(root, args.keep, args.max_age_days, args.dry_run)
        print(f"{'would prune' if args.dry_run else 'pruned'}: {', '.join(doomed) or 'none'}")
    elif args.command == "list":
        for b in sorted(scan(root), key=lambda b: b.started_at, reverse=True):
            m = read_manifest(root / b.name) or {}
            print(f"{b.name}  {m.get('status', 'unfinished'):<8} {_mb(m.get('bytes', 0)):>10}  "
                  f"{', '.join(m.get('parts', {}))}")  # fmt: skip
    else:
        chosen = choose(scan(root), args.name)
        loc = locate({"predictions": args.to_database_url, "mlflow": args.to_mlflow_uri,
                      "mlartifacts": args.to_artifacts, "optuna": args.to_optuna_storage, "dvc": args.to_dvc})  # fmt: skip
        report = restore(root / chosen.name, loc, args.only or PARTS, args.force)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        for part, entry in report["parts"].items():
            print(
                f"  {part:<12} -> {entry['target']}  {entry['restored']} ({entry['seconds']:.1f} s)"
            )
        print(f"restored {chosen.name} in {report['seconds']:.1f} s")


if __name__ == "__main__":
    run_main(main)
