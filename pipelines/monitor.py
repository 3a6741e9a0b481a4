"""`make monitor`: compare a window of logged production traffic with the champion's own
out-of-sample reference (read from the registry, whatever the DVC workspace holds), featurized
by the champion's own feature builder (Evidently); score realized performance where outcomes
arrived against the champion's test metrics; decide whether to retrain, record the decision
in the prediction store, write reports/monitoring/<timestamp>.{html,json}, add the run to the
Evidently workspace and, when the decision is retrain and params allow it, run the retrain.
Warns when the traffic was served by another version than @champion.

One run at a time: the whole run (monitoring and the retrain it starts) holds the `monitor`
lock in the prediction store, so a manual run, a Kubernetes CronJob and `riskloop schedule`
never overlap; a run that finds it held does nothing.

Exit codes: 0 a decision was taken (retrain or not: read the JSON), 1 an error (missing
reference, dead store, bad logged data, no champion), 2 no decision (window too small),
75 another monitor run holds the lock (the message names the holder and since when)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import Contract, check_values
from monitoring import lock, records
from monitoring import report as rep
from monitoring.frames import build_frames, monitored_columns
from monitoring.policy import Decision, Evidence, decide
from pipelines import paths
from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import LockHeld, MonitoringError
from riskloop.package import ModelPackage
from riskloop.settings import Params, load_params
from serving.config import ServingEnv

log = logging.getLogger("monitor")
REPORTS = paths.REPORTS / "monitoring"
EXIT_NO_DECISION = 2


def workspace_dir() -> Path:
    return stores.state_dir() / "evidently"


def parse_since(text: str | None) -> datetime | None:
    """An ISO time, or a duration back from now: 90m, 6h, 2d."""
    if not text:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise MonitoringError(f"--since {text!r}: expected an ISO time or 90m / 6h / 2d") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class Champion:
    """What monitoring needs of @champion, all from the registered version itself."""

    info: dict[str, Any]  # name, version, age, test metrics, uri (the JSON report's "champion")
    model: Any  # training.model.CreditRiskModel, loaded with its own feature code
    contract: Contract
    reference: pd.DataFrame  # its out-of-sample reference (the rows it was evaluated on)


def load_champion(params: Params) -> Champion:
    from training.registry import version_uri
    from training.tracking import connect

    _, _, registry = connect(params.registry)
    champ = registry.champion()
    if champ is None:
        raise MonitoringError(
            f"{registry.name} has no @champion: nothing is being served to monitor"
        )
    uri = version_uri(registry.name, champ.version)
    try:
        pkg = ModelPackage.download(uri)
        reference, meta = pkg.reference(), pkg.reference_meta
        contract = Contract.from_json(pkg.contract_doc)
    except FileNotFoundError as exc:
        raise MonitoringError(f"@champion v{champ.version}: {exc}") from exc
    model = pkg.load_pyfunc().unwrap_python_model()
    unknown = [c for c in params.monitoring.psi.key_features
               if c not in monitored_columns(model.feature_names, contract)]  # fmt: skip
    if unknown:
        raise MonitoringError(
            f"monitoring.psi.key_features names column(s) {unknown} that champion "
            f"v{champ.version} neither uses nor protects"
        )
    age = (datetime.now(UTC).timestamp() * 1000 - champ.creation_timestamp) / 86_400_000
    info = {"name": registry.name, "version": str(champ.version), "age_days": round(age, 3),
            "test_metrics": meta["metrics"], "uri": uri,
            "reference": {"rows": meta["rows"], "split": meta["split"],
                          "data_hash": meta.get("data_hash")}}  # fmt: skip
    return Champion(info, model, contract, reference)


def check_window(window: pd.DataFrame, contract: Contract) -> None:
    """Logged traffic must carry the champion's model inputs within its contract (the
    protected attributes may be missing); name what is wrong."""
    missing = [c for c in contract.model_inputs if c not in window.columns]
    if missing:
        raise MonitoringError(
            f"logged predictions cannot be compared with the reference: missing column(s) {missing}"
        )
    problems = check_values(window, contract, list(contract.model_inputs))
    if problems:
        raise MonitoringError("logged predictions do not fit the champion's contract: "
                              + "; ".join(str(v) for v in problems[:5]))  # fmt: skip


def output_stem(now: datetime) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    stem = REPORTS / now.strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while stem.with_suffix(".json").exists():
        stem = REPORTS / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{n}"
        n += 1
    return stem


def record(
    engine, now: datetime, decision: Decision, payload: dict[str, Any], window: pd.DataFrame
) -> int:
    created = window["created_at"]
    return records.record_run(engine, {
        "created_at": now, "status": decision.status, "retrain": decision.retrain,
        "reasons": decision.reasons, "model_version": payload.get("champion", {}).get("version"),
        "window_start": created.min().to_pydatetime() if len(window) else None,
        "window_end": created.max().to_pydatetime() if len(window) else None,
        "rows": payload["window"]["rows"], "labelled_rows": int(window["defaulted"].notna().sum()),
        "report": payload.get("json"), "summary": payload,
    })  # fmt: skip


def run(params: Params, last_n: int | None, since: datetime | None, act: bool) -> int:
    mon = params.monitoring
    now = datetime.now(UTC)
    engine = records.open_store(ServingEnv().store_url())
    try:
        total = records.window_size(engine, last_n, since)
        cap = mon.window.sample_rows
        fraction = cap / total if cap is not None and total > cap else None
        window = records.load_window(engine, last_n, since, fraction)
        stem = output_stem(now)
        base = {"created_at": now.isoformat(), "json": str(stem.with_suffix(".json")),
                "window": {"rows": total, "last_n": last_n, "since": since.isoformat() if since else None,
                           **({"sampled_rows": len(window)} if fraction else {})}}  # fmt: skip
        if fraction:
            log.info(
                "window of %d predictions: statistics on a uniform sample of %d (by id)",
                total,
                len(window),
            )
        if total < mon.window.min_rows:
            decision = decide(Evidence(total, 0.0, {}, 0, None, None), mon, None, now)
            payload = {**base, **decision.as_dict()}
            paths.write_json(stem.with_suffix(".json"), payload)
            record(engine, now, decision, payload, window)
            print(f"no decision: {decision.reasons[0]}", file=sys.stderr)
            print(f"decision: {stem.with_suffix('.json')}")
            return EXIT_NO_DECISION
        champion = load_champion(params)
        check_window(window, champion.contract)
        frames = build_frames(window, champion.reference, champion.model.builder, champion.contract,
                              params.serving.decisions, mon.protected_min_rows)  # fmt: skip
        drift_snap = rep.drift_report(frames, mon.drift_share, mon.psi.alert)
        drift = rep.summarize_drift(drift_snap, frames, mon.psi.warn, mon.psi.alert)
        labelled = int(frames.current[rep.TARGET].notna().sum())
        realized, perf_snap = None, None
        ev = params.evaluate
        if labelled >= mon.min_labelled:
            realized = rep.realized_metrics(frames, ev.calibration_bins, ev.decision_threshold)
            if realized is not None:
                perf_snap = rep.performance_report(frames)
                realized["evidently_roc_auc"] = rep.summarize_performance(perf_snap)["roc_auc"]
        evidence = Evidence(
            rows=total, drift_share=drift["drift_share"],
            psi={c: v["psi"] for c, v in drift["columns"].items() if "psi" in v},
            labelled_rows=labelled,
            realized_auc=realized["evidently_roc_auc"] if realized else None,
            model_age_days=champion.info["age_days"],
        )  # fmt: skip
        last = records.last_retrain_decision(engine, timedelta(hours=mon.cooldown_hours))
        decision = decide(evidence, mon, last["created_at"] if last else None, now)
        # a retrain this episode decided but could not act on yet (too few labelled rows then):
        # the cooldown keeps it one episode, one retrain; acting on it later is that retrain
        waiting = (
            last if decision.status == "cooldown" and last and last["acted_at"] is None else None
        )
        html = stem.with_suffix(".html")
        drift_snap.save_html(str(html))
        reports = {"drift_html": str(html)}
        if perf_snap is not None:
            perf_html = stem.parent / f"{stem.name}-performance.html"
            perf_snap.save_html(str(perf_html))
            reports["performance_html"] = str(perf_html)
        served = sorted(window["model_version"].astype(str).unique())
        others = [v for v in served if v != champion.info["version"]]
        warnings = [f"traffic in this window was served by v{', v'.join(others)}, not @champion "
                    f"v{champion.info['version']}: run `make deploy`"] if others else []  # fmt: skip
        payload = {
            **base, **decision.as_dict(), "reports": reports, "champion": champion.info,
            "warnings": warnings,
            "window": {**base["window"], "labelled_rows": labelled, "served_by_versions": served,
                       "start": window["created_at"].min().isoformat(),
                       "end": window["created_at"].max().isoformat()},
            "drift": drift, "realized": realized,
        }  # fmt: skip
        paths.write_json(stem.with_suffix(".json"), payload)
        run_id = record(engine, now, decision, payload, window)
        try:
            from monitoring.workspace import add_runs

            runs = [(f"{stem.name} drift", drift_snap)]
            if perf_snap is not None:
                runs.append((f"{stem.name} performance", perf_snap))
            add_runs(workspace_dir(), params.registry.model_name, mon.psi.key_features, runs,
                     frames.protected)  # fmt: skip
        except Exception as exc:  # the dashboard is a view; the decision is already recorded
            log.warning("could not add the run to the Evidently workspace: %s", exc)
        _print(decision, payload, stem)
    finally:
        engine.dispose()
    if decision.retrain and act:
        from pipelines.retrain import retrain

        retrain(params, run_id)
    elif waiting is not None and act:
        from pipelines.retrain import TooFewLabels, retrain

        try:
            retrain(params, int(waiting["id"]))
        except TooFewLabels as exc:  # the next run tries again
            print(f"the retrain decided at {waiting['created_at']:%Y-%m-%d %H:%M} waits: {exc}")
    elif decision.retrain:
        print("retrain decided; run `make retrain` to act on it (monitoring.retrain.act is false)")
    return 0


def _print(decision: Decision, payload: dict[str, Any], stem: Path) -> None:
    for warning in payload["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    drift = payload["drift"]
    print(f"window: {payload['window']['rows']} predictions, {payload['window']['labelled_rows']} labelled; "
          f"drifted share {drift['drift_share']:.0%}; score PSI {drift['score'].get('psi', float('nan')):.3f}")  # fmt: skip
    if payload["realized"]:
        r = payload["realized"]
        print(f"realized: AUC {r['evidently_roc_auc']:.4f} (champion test "
              f"{payload['champion']['test_metrics'].get('roc_auc', float('nan')):.4f}), "
              f"Gini {r['gini']:.4f}, KS {r['ks']:.4f}, ECE {r['ece']:.4f}")  # fmt: skip
    print(f"decision: {decision.status} (retrain: {str(decision.retrain).lower()})")
    for reason in decision.reasons:
        print(f"  - {reason}")
    for key, path in payload["reports"].items():
        print(f"{key}: {path}")
    print(f"json: {stem.with_suffix('.json')}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--last", type=int, help="the newest N predictions (default: monitoring.window.last_n)"
    )
    ap.add_argument("--since", help="predictions since an ISO time or 90m / 6h / 2d ago")
    ap.add_argument("--act", action=argparse.BooleanOptionalAction, default=None,
                    help="run the retrain when decided (default: monitoring.retrain.act)")  # fmt: skip
    args = ap.parse_args()
    params = load_params()
    window = params.monitoring.window
    last_n = args.last if args.last is not None else (None if args.since else window.last_n)
    if last_n is not None and last_n < 1:
        raise MonitoringError(f"--last {last_n}: must be at least 1")
    since = parse_since(args.since) or (
        None if args.last is not None or not window.since_hours
        else datetime.now(UTC) - timedelta(hours=window.since_hours)
    )  # fmt: skip
    act = params.monitoring.retrain.act if args.act is None else args.act
    engine = records.open_store(ServingEnv().store_url())
    try:
        with lock.held(engine, lock.MONITOR):
            code = run(params, last_n, since, act)
    except LockHeld as exc:  # raised before any work: nothing ran, try at the next due time
        print(exc, file=sys.stderr)
        sys.exit(lock.EXIT_LOCKED)
    finally:
        engine.dispose()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_main(main)
