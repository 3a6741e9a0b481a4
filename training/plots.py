"""PNG versions of the evaluation curves, logged to MLflow next to DVC's CSV plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt
import pandas as pd


def save_curves(out: Path, roc: pd.DataFrame, pr: pd.DataFrame, calib: pd.DataFrame,
                dist: pd.DataFrame) -> list[Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    files = []

    def _save(name: str, fig) -> None:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        files.append(path)

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(roc["fpr"], roc["tpr"])
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    _save("roc", fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(pr["recall"], pr["precision"])
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    _save("pr", fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(calib["mean_predicted"], calib["observed_rate"], marker="o")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted PD", ylabel="observed default rate", title="Calibration")
    _save("calibration", fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for col in ("non_default", "default"):
        ax.plot(dist["bin_center"], dist[col], label=col)
    ax.set(xlabel="predicted PD", ylabel="share of class", title="Score distribution")
    ax.legend()
    _save("score_distribution", fig)
    return files
