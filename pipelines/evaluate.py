"""Stage `evaluate`: score the untouched test split with the registered challenger (through
the MLflow model itself, which must reproduce the out-of-sample reference it carries), write
metrics.json, DVC plots, importance, fairness and the challenger-vs-champion table; log them
to the training run and as version tags."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines import lineage, paths
from riskloop import package
from riskloop.cli import run_main
from riskloop.errors import RegistryError
from riskloop.settings import load_params
from training import metrics as m
from training import report
from training.plots import save_curves
from training.registry import version_uri
from training.tracking import connect

log = logging.getLogger("evaluate")


def score(uri: str | package.ModelPackage, raw: pd.DataFrame):
    """(probabilities, the riskloop model) from the MLflow model at `uri`, loaded with its
    own feature code; its own contract types the input."""
    pkg = uri if isinstance(uri, package.ModelPackage) else package.ModelPackage.download(uri)
    model = pkg.load_pyfunc()
    inner = model.unwrap_python_model()
    return model.predict(inner.contract.input_frame(raw)), inner


def recent_comparison(version: str, champ, registry, target: str, ev) -> dict | None:
    """Challenger vs champion on the recent labelled production window a retrain held out
    (data/prepared/recent.parquet); None when there is none or it holds one class only."""
    if not paths.RECENT.exists():
        return None
    recent = pd.read_parquet(paths.RECENT)
    if len(recent) == 0 or recent[target].nunique() < 2:
        return None
    y = recent[target].to_numpy()
    out = {"rows": len(recent), "challenger": m.classification_metrics(
        y, score(version_uri(registry.name, version), recent)[0], ev.decision_threshold, ev.calibration_bins)}  # fmt: skip
    if champ:
        out["champion"] = m.classification_metrics(
            y, score(version_uri(registry.name, champ.version), recent)[0],
            ev.decision_threshold, ev.calibration_bins)  # fmt: skip
    table = report.comparison(out["challenger"], out.get("champion"))
    paths.EVAL_DIR.mkdir(parents=True, exist_ok=True)
    table.to_csv(paths.EVAL_DIR / "champion_vs_challenger_recent.csv", index=False)
    print("recent production window:")
    print(table.to_string(index=False))
    return out


def main() -> None:
    params = load_params()
    ev, data = params.evaluate, params.data
    client, _, registry = connect(params.registry)
    trained = paths.read_json(paths.TRAIN_REPORT)
    mv = registry.by_fingerprint(trained["model_sha256"])
    version, run_id = str(mv.version), mv.run_id
    test, test_excluded = lineage.test_split(params)
    y = test[data.target].to_numpy()
    pkg = package.ModelPackage.download(version_uri(registry.name, version))
    p, inner = score(pkg, test)
    carried = pkg.reference()[package.REFERENCE_SCORE].to_numpy()
    if len(carried) != len(p) or not np.allclose(carried, p, rtol=1e-6, atol=1e-9):
        raise RegistryError(
            f"v{version} does not reproduce the out-of-sample reference it carries on this "
            "test split: train and evaluate saw different data (rerun `dvc repro`)"
        )
    test_metrics = m.classification_metrics(y, p, ev.decision_threshold, ev.calibration_bins)

    champ = registry.champion()
    champ_metrics = None
    if champ is not None and str(champ.version) != version:
        p_champ, _ = score(version_uri(registry.name, champ.version), test)
        champ_metrics = m.classification_metrics(
            y, p_champ, ev.decision_threshold, ev.calibration_bins
        )
    table = report.comparison(test_metrics, champ_metrics)
    recent = recent_comparison(
        version, champ_metrics is not None and champ, registry, data.target, ev
    )

    paths.PLOTS.mkdir(parents=True, exist_ok=True)
    roc, pr = m.roc_points(y, p), m.pr_points(y, p)
    calib, dist = m.calibration_table(y, p, ev.calibration_bins), m.score_distribution(y, p)
    for name, frame in {
        "roc": roc,
        "pr": pr,
        "calibration": calib,
        "score_distribution": dist,
    }.items():
        frame.to_csv(paths.PLOTS / f"{name}.csv", index=False)
    paths.EVAL_DIR.mkdir(parents=True, exist_ok=True)
    importance = report.importance(inner.contributions(test), ev.top_features)
    fairness = report.fairness_table(test, y, p, data, ev.decision_threshold)
    importance.to_csv(paths.EVAL_DIR / "feature_importance.csv", index=False)
    fairness.to_csv(paths.EVAL_DIR / "fairness.csv", index=False)
    table.to_csv(paths.EVAL_DIR / "champion_vs_challenger.csv", index=False)
    pngs = save_curves(paths.EVAL_DIR, roc, pr, calib, dist)

    paths.write_json(paths.METRICS, {
        "test": test_metrics,
        "cv": {"roc_auc_mean": trained["cv_auc_mean"], "roc_auc_std": trained["cv_auc_std"]},
        "valid": {"roc_auc": trained["best_valid_auc"]},
        **({"recent": recent} if recent else {}),
        **({"test_rows": len(test), "test_rows_excluded_as_production_customers": test_excluded}
           if test_excluded else {}),
    })  # fmt: skip

    for k, v in test_metrics.items():
        client.log_metric(run_id, f"test_{k}", float(v))
    for f in [*paths.EVAL_DIR.glob("*.csv"), *pngs]:
        client.log_artifact(run_id, str(f), "evaluation")
    for f in paths.PLOTS.glob("*.csv"):
        client.log_artifact(run_id, str(f), "evaluation/plots")
    tags = {
        f"test_{k}": f"{test_metrics[k]:.6g}" for k in ("roc_auc", "gini", "ks", "brier", "ece")
    }
    tags["evaluated_against_champion"] = champ.version if champ_metrics else "none"
    if recent:
        tags["recent_roc_auc"] = f"{recent['challenger']['roc_auc']:.6g}"
        tags["recent_rows"] = str(recent["rows"])
    registry.set_tags(version, tags)
    log.info("v%s test: auc %.4f gini %.4f ks %.4f brier %.4f ece %.4f", version, test_metrics["roc_auc"],
             test_metrics["gini"], test_metrics["ks"], test_metrics["brier"], test_metrics["ece"])  # fmt: skip
    print(table.to_string(index=False))


if __name__ == "__main__":
    run_main(main)
