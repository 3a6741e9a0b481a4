"""Stage `evaluate`: score the untouched test split with the registered challenger (through
the MLflow model itself, which must reproduce the out-of-sample reference it carries), write
metrics.json, DVC plots, importance, fairness, the challenger-vs-champion table and the model
card (reports/evaluate/model_card.html, training/card.py); log them to the training run and
their key figures as version tags."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from pipelines import headline, lineage, paths, samples
from riskloop import package, stores
from riskloop.cli import run_main
from riskloop.errors import RegistryError
from riskloop.settings import Params, load_params, texts_for
from serving.scoring import cutoffs
from training import card_html, report, score_counts
from training import metrics as m
from training.card import bootstrap_intervals, gate_count, monotonicity, verdict
from training.gates import Scored, candidate_gates
from training.plots import save_curves
from training.registry import version_uri
from training.tracking import connect

log = logging.getLogger("evaluate")
CARD = paths.EVAL_DIR / "model_card.html"
CARD_ARTIFACT_DIR = "model_card"  # under the version's training run; MLflow's UI renders it
CSV_FLOAT = "%.6g"  # the evaluation tables as people read them in MLflow's preview


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


# ---------------------------------------------------------------- model card
def served(params: Params, role: str, version: str, pkg: package.ModelPackage,
           p: np.ndarray) -> card_html.ModelScores:  # fmt: skip
    """A model's test-split PD with the cuts the service gives it (resolved from its own
    out-of-sample reference, as promote and serving resolve them)."""
    cut = cutoffs(params.serving.decisions, pkg.reference_scores)
    return card_html.ModelScores(role, version, np.asarray(p, dtype=float), cut)


def stability(train_p: np.ndarray, test_p: np.ndarray) -> card_html.Stability:
    # here, not at the top: monitoring.psi registers an Evidently stat test (seconds to import)
    from monitoring.psi import DEFAULT_BINS, bin_shares, psi

    ref, cur = bin_shares(train_p, test_p, DEFAULT_BINS)
    return card_html.Stability(psi(train_p, test_p), ref, cur, len(train_p), len(test_p))


def split_rows(test: lineage.TestRows, excluded: int, sample_rows: int) -> str:
    rows = {s: samples.split_rows(s) for s in ("train", "valid")}
    left = f" ({excluded:,} left out: customers seen in production batches)" if excluded else ""
    text = f"train {rows['train']:,}, valid {rows['valid']:,}, test {test.rows:,}{left}"
    if test.sampled or rows["train"] > sample_rows:
        text += (f"; headline metrics on every test row, the rest of this card on a seeded sample "
                 f"of at most {sample_rows:,} rows a split (evaluate.sample_rows)")  # fmt: skip
    return text


def period(params: Params) -> str:
    column = params.data.time_column
    if column is None:
        return "no time column (stratified random split)"
    spans = []
    for split in paths.SPLITS:  # streamed: a large split is never one column in memory
        t = [b[column] for b in samples.batches(samples.split_path(split), params.compute.partition_rows, [column])]  # fmt: skip
        spans.append(f"{split} {min(c.min() for c in t)} to {max(c.max() for c in t)}")
    return f"{column}: " + "; ".join(spans)


def lineage_rows(params: Params, mv: ModelVersion, trained: dict, rows: str) -> dict[str, str]:
    tags, data = mv.tags, params.data
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
    source = f" from {data.source.package}" if data.source else ""
    return {
        "model version": f"{trained['model_name']} v{mv.version}"
        + (f" (@{', @'.join(mv.aliases)})" if mv.aliases else ""),
        "registered": created.strftime("%Y-%m-%d %H:%M UTC"),
        "MLflow run": mv.run_id,
        "git commit": tags.get("git_commit", "unknown"),
        "data": f"{data.raw_file}{source}; DVC hash {trained['data_hash']}",
        "rows": rows,
        "period": period(params),
        "search": f"Optuna study {trained['study_name']}: {trained['n_trials']} trials, best "
        f"{trained.get('tuned_on', 'valid split')} AUC {trained['best_valid_auc']:.4f}; CV AUC of the refit {trained['cv_auc_mean']:.4f} "
        f"± {trained['cv_auc_std']:.4f}",
        "model sha256": trained["model_sha256"][:16],
    }


def training_params(trained: dict, constraints: dict[str, int]) -> dict[str, object]:
    best = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in trained["best_params"].items()}
    return {**best, "boost_rounds": trained["boost_rounds"],
            "monotone_constraints": f"{sum(v != 0 for v in constraints.values())} features"}  # fmt: skip


def card_tags(card: card_html.CardData, name: str) -> dict[str, str]:
    """The card's key figures as short version tags (the MLflow UI's version page). Every key
    is always set: a re-evaluation must not leave an earlier run's figure behind."""
    gates, iv = card.gates, card.intervals
    failed = [g.name for g in gates if not g.passed]
    held = sum(c.passed for c in card.monotone)
    ratios = [(g.value, g.name.removeprefix("approval_ratio")[1:-1]) for g in gates
              if g.name.startswith("approval_ratio[") and g.value is not None]  # fmt: skip
    versus = "no champion"
    if iv.difference and card.champion:
        versus = f"{iv.difference['roc_auc'].text(signed=True)} vs v{card.champion.version}"
    return {
        "card.verdict": card.verdict,
        "card.gates_passed": gate_count(gates),
        "card.gates_failed": ", ".join(failed) or "none",
        "card.test_auc_ci": iv.candidate["roc_auc"].text(),
        "card.auc_vs_champion": versus,
        "card.score_psi": "not measured" if card.stability is None else f"{card.stability.psi:.3f}",
        "card.min_approval_ratio": "{:.3f} ({})".format(*min(ratios)) if ratios else "not gated",
        "card.monotonicity": f"{held}/{len(card.monotone)} hold",
        "card.artifact": f"{CARD_ARTIFACT_DIR}/{name}",
    }


def model_card(params: Params, mv: ModelVersion, trained: dict, test_rows: lineage.TestRows, excluded: int,
               pkg: package.ModelPackage, inner, challenger: card_html.ModelScores,
               champion: card_html.ModelScores | None, importance: pd.DataFrame,
               headline: dict[str, tuple]) -> card_html.CardData:  # fmt: skip
    """Everything the card shows: the promotion gates as promote runs them (training/gates.py,
    on the probabilities scored here), bootstrap intervals, monotonicity, stability."""
    from pipelines.promote import train_scores  # promote imports this module: import late

    test = test_rows.frame
    data, y = params.data, test[params.data.target].to_numpy()
    train = samples.read(params, "train").frame
    train_p, added = train_scores(params, pkg, train)
    baseline = None
    if params.promotion.min_auc_over_baseline is not None:
        from training.baseline import baseline_auc

        baseline = baseline_auc(train, test, data)
    rule = f"approve = risk_score < {challenger.cut.review_from}, v{challenger.version}'s review_from as served"  # fmt: skip
    groups = report.protected_groups(test, data)
    scored = Scored(y=y, candidate=challenger.p, approved=challenger.approved, approval_rule=rule,
                    groups=groups, champion=None if champion is None else champion.p, train=train_p,
                    train_left_out=added, baseline_auc=baseline, **headline_auc(headline))  # fmt: skip
    gates = candidate_gates(scored, params.promotion)
    intervals = bootstrap_intervals(y, challenger.p, None if champion is None else champion.p)
    names = inner.feature_names
    constraints = {f: c for f, c in params.train.monotone_constraints.items() if f in names}
    checks = monotonicity(lambda f: inner.booster.inplace_predict(f, predict_type="margin"),
                          inner.features(test)[names], constraints)  # fmt: skip
    headline = verdict(challenger.version, gates, None if champion is None else champion.version,
                       None if intervals.difference is None else intervals.difference["roc_auc"])  # fmt: skip
    texts = dict(
        zip(names, texts_for(names, params.serving.reason_texts, data.onehot), strict=True)
    )
    purpose = (f"Probability that a customer defaults ({data.target}), served as a 0-100 risk score "
               "(the PD in percent) with a risk band and a decision. Protected attributes "
               f"({', '.join(data.protected) or 'none'}) are kept out of the model's inputs and used "
               "for the fairness checks below.")  # fmt: skip
    return card_html.CardData(
        model_name=trained["model_name"], y=y, challenger=challenger, champion=champion,
        gates=gates, verdict=headline, intervals=intervals, purpose=purpose,
        lineage=lineage_rows(params, mv, trained, split_rows(test_rows, excluded, params.evaluate.sample_rows)),
        training_params=training_params(trained, constraints), approval_rule=rule, groups=groups,
        bands=params.serving.bands, importance=importance, reason_texts=texts, monotone=checks,
        stability=stability(train_p, challenger.p), calibration_bins=params.evaluate.calibration_bins,
        decision_threshold=params.evaluate.decision_threshold,
        min_group_rows=params.promotion.min_group_rows,
        min_approval_ratio=params.promotion.min_approval_ratio, test_rows=scored.test_rows,
    )  # fmt: skip


def headline_rows(params: Params, model_name: str, test: lineage.TestRows,
                  packages: dict[str, tuple[str, package.ModelPackage]],
                  sample_p: dict[str, np.ndarray]) -> dict[str, tuple]:  # fmt: skip
    """(y, p, weight) by role over every test row (pipelines/headline.py): the sample's own
    scores when it is the whole split on the local engine, else score counts, weighted."""
    if params.compute.engine == "local" and not test.sampled:
        y = test.frame[params.data.target].to_numpy()
        return {role: (y, p, None) for role, p in sample_p.items()}
    seen = frozenset(lineage.production_customers(params))
    if params.compute.engine == "dask":
        uris = {role: version_uri(model_name, v) for role, (v, _) in packages.items()}
        counts = headline.cluster_counts(params, uris, stores.tracking_uri(), seen)
    else:
        models = {role: pkg.load_pyfunc() for role, (_, pkg) in packages.items()}
        counts = headline.local_counts(params, models, seen)
    return {role: score_counts.as_rows(t) for role, t in counts.items()}


def headline_auc(rows: dict[str, tuple]) -> dict:
    """Scored's test_rows and headline_auc (training/gates.py) from headline_rows: the rows
    counted, and each model's AUC over them."""
    from sklearn.metrics import roc_auc_score

    role = {"challenger": "candidate", "champion": "champion"}
    return {"test_rows": round(float(np.sum(rows["challenger"][2]))) if rows["challenger"][2] is not None
            else len(rows["challenger"][0]),
            "headline_auc": {role[r]: float(roc_auc_score(y, p, sample_weight=w))
                             for r, (y, p, w) in rows.items()}}  # fmt: skip


def main() -> None:
    params = load_params()
    ev, data = params.evaluate, params.data
    client, _, registry = connect(params.registry)
    trained = paths.read_json(paths.TRAIN_REPORT)
    mv = registry.by_fingerprint(trained["model_sha256"])
    version, run_id = str(mv.version), mv.run_id
    test_rows = lineage.test_split(params)
    test = test_rows.frame
    pkg = package.ModelPackage.download(version_uri(registry.name, version))
    p, inner = score(pkg, test)
    carried = pkg.reference()[package.REFERENCE_SCORE].to_numpy()
    if len(carried) != len(p) or not np.allclose(carried, p, rtol=1e-6, atol=1e-9):
        raise RegistryError(
            f"v{version} does not reproduce the out-of-sample reference it carries on this "
            "test split: train and evaluate saw different data (rerun `dvc repro`)"
        )
    champ = registry.champion()
    packages, champ_scores = {"challenger": (version, pkg)}, None
    if champ is not None and str(champ.version) != version:
        champ_pkg = package.ModelPackage.download(version_uri(registry.name, champ.version))
        packages["champion"] = (str(champ.version), champ_pkg)
        champ_scores = served(
            params, "champion", str(champ.version), champ_pkg, score(champ_pkg, test)[0]
        )
    rows = headline_rows(params, registry.name, test_rows, packages,
                         {"challenger": p} | ({"champion": champ_scores.p} if champ_scores else {}))  # fmt: skip
    test_metrics = m.classification_metrics(*rows["challenger"][:2], ev.decision_threshold,
                                            ev.calibration_bins, rows["challenger"][2])  # fmt: skip
    champ_metrics = None
    if champ_scores:
        champ_metrics = m.classification_metrics(*rows["champion"][:2], ev.decision_threshold,
                                                 ev.calibration_bins, rows["champion"][2])  # fmt: skip
    table = report.comparison(test_metrics, champ_metrics)
    recent = recent_comparison(
        version, champ_metrics is not None and champ, registry, data.target, ev
    )

    paths.PLOTS.mkdir(parents=True, exist_ok=True)
    y_w, p_w, w = rows["challenger"]
    roc, pr = m.roc_points(y_w, p_w, w), m.pr_points(y_w, p_w, w)
    calib = m.calibration_table(y_w, p_w, ev.calibration_bins, w)
    dist = m.score_distribution(y_w, p_w, weight=w)
    for name, frame in {
        "roc": roc,
        "pr": pr,
        "calibration": calib,
        "score_distribution": dist,
    }.items():
        frame.to_csv(paths.PLOTS / f"{name}.csv", index=False)
    paths.EVAL_DIR.mkdir(parents=True, exist_ok=True)
    importance = report.importance(inner.contributions(test), ev.top_features)
    importance.to_csv(
        paths.EVAL_DIR / "feature_importance.csv", index=False, float_format=CSV_FLOAT
    )
    table.to_csv(paths.EVAL_DIR / "champion_vs_challenger.csv", index=False, float_format=CSV_FLOAT)
    pngs = save_curves(paths.EVAL_DIR, roc, pr, calib, dist)

    started = time.perf_counter()
    challenger = served(params, "challenger", version, pkg, p)
    # approval as the service decides it (the gates' and the card's), not p < a threshold
    fairness = report.fairness_table(
        test, test[data.target].to_numpy(), p, data, challenger.approved
    )
    fairness.to_csv(paths.EVAL_DIR / "fairness.csv", index=False, float_format=CSV_FLOAT)
    # get_model_version, not the search by_fingerprint ran: only it returns the aliases
    test_excluded = test_rows.rows - int(test_metrics["n"])  # of the whole split
    card = model_card(params, registry.version(version), trained, test_rows, test_excluded, pkg, inner,
                      challenger, champ_scores, importance, rows)  # fmt: skip
    CARD.write_text(card_html.render(card), encoding="utf-8")
    log.info("model card %s in %.1fs: %s", CARD, time.perf_counter() - started, card.verdict)

    paths.write_json(paths.METRICS, {
        "test": test_metrics,
        "cv": {"roc_auc_mean": trained["cv_auc_mean"], "roc_auc_std": trained["cv_auc_std"]},
        "valid": {"roc_auc": trained["best_valid_auc"]},
        **({"recent": recent} if recent else {}),
        **({"test_rows": int(test_metrics["n"]), "test_rows_excluded_as_production_customers": test_excluded}
           if test_excluded else {}),
        **({"sample": {"rows": len(test), "of": test_rows.rows, "sample_rows": ev.sample_rows}}
           if test_rows.sampled else {}),
    })  # fmt: skip

    for k, v in test_metrics.items():
        client.log_metric(run_id, f"test_{k}", float(v))
    for f in [*paths.EVAL_DIR.glob("*.csv"), *pngs]:
        client.log_artifact(run_id, str(f), "evaluation")
    for f in paths.PLOTS.glob("*.csv"):
        client.log_artifact(run_id, str(f), "evaluation/plots")
    client.log_artifact(run_id, str(CARD), CARD_ARTIFACT_DIR)
    tags = {
        f"test_{k}": f"{test_metrics[k]:.6g}" for k in ("roc_auc", "gini", "ks", "brier", "ece")
    }
    tags["evaluated_against_champion"] = champ.version if champ_metrics else "none"
    tags |= card_tags(card, CARD.name)
    if recent:
        tags["recent_roc_auc"] = f"{recent['challenger']['roc_auc']:.6g}"
        tags["recent_rows"] = str(recent["rows"])
    registry.set_tags(version, tags)
    log.info("v%s test: auc %.4f gini %.4f ks %.4f brier %.4f ece %.4f", version, test_metrics["roc_auc"],
             test_metrics["gini"], test_metrics["ks"], test_metrics["brier"], test_metrics["ece"])  # fmt: skip
    print(table.to_string(index=False))


if __name__ == "__main__":
    run_main(main)
