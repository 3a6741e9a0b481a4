"""The Evidently workspace (`make monitor-ui`): one project per registered model, a dashboard
of panels over time, and every monitoring run added to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evidently.core.report import Snapshot
from evidently.sdk.models import PanelMetric
from evidently.sdk.panels import counter_panel, line_plot_panel
from evidently.ui.workspace import Project, Workspace

from monitoring import psi as _psi
from monitoring.report import INTERVENED, SCORE

_V2 = "evidently:metric_v2:"


def _panels(key_features: Sequence[str], protected: Sequence[str]) -> list:
    drifted_share = PanelMetric(
        legend="share", metric=f"{_V2}DriftedColumnsCount", metric_labels={"value_type": "share"}
    )
    return [
        counter_panel(
            "Predictions in the window",
            [PanelMetric(legend="rows", metric=f"{_V2}RowCount")],
            size="half",
            aggregation="last",
        ),
        counter_panel(
            "Drifted share (last run)",
            [drifted_share],
            size="half",
            aggregation="last",
        ),
        line_plot_panel(
            "Drifted share of monitored columns",
            [drifted_share],
            size="half",
        ),
        line_plot_panel(
            "PSI of key features (retrain at 0.25)",
            [
                PanelMetric(
                    legend=c,
                    metric=f"{_V2}ValueDrift",
                    metric_labels={"column": c, "method": _psi.NAME},
                )
                for c in key_features
            ],
            size="half",
        ),
        line_plot_panel(
            "Score distribution: PD quantiles and mean",
            [
                *[
                    PanelMetric(
                        legend=f"q{q}",
                        metric=f"{_V2}QuantileValue",
                        metric_labels={"column": SCORE, "quantile": str(q / 100)},
                    )
                    for q in (10, 50, 90)
                ],
                PanelMetric(
                    legend="mean", metric=f"{_V2}MeanValue", metric_labels={"column": SCORE}
                ),
            ],
            size="half",
        ),
        line_plot_panel(
            "Score PSI",
            [
                PanelMetric(
                    legend="PSI",
                    metric=f"{_V2}ValueDrift",
                    metric_labels={"column": SCORE, "method": _psi.NAME},
                )
            ],
            size="half",
        ),
        line_plot_panel(
            "Realized ROC AUC (labelled rows of the window)",
            [PanelMetric(legend="AUC", metric=f"{_V2}RocAuc")],
            size="half",
        ),
        line_plot_panel(
            "Share of rows without each protected attribute (not collected)",
            [
                PanelMetric(
                    legend=c,
                    metric=f"{_V2}MissingValueCount",
                    metric_labels={"column": c, "value_type": "share"},
                )
                for c in protected
            ],
            size="half",
        ),
        line_plot_panel(
            "Interventions in the window",
            [
                PanelMetric(
                    legend="interventions",
                    metric=f"{_V2}SumValue",
                    metric_labels={"column": INTERVENED},
                )
            ],
            size="half",
        ),
    ]


def project(path: Path, name: str, key_features: Sequence[str],
            protected: Sequence[str] = ()) -> tuple[Workspace, Project]:  # fmt: skip
    """The workspace at `path` and its project `name`, created with the dashboard if new."""
    path.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(path))
    found = ws.search_project(name)
    if found:
        return ws, found[0]
    proj = ws.create_project(
        name, description="riskloop monitoring: drift, PSI, realized performance"
    )
    for panel in _panels(key_features, protected):
        proj.dashboard.add_panel(panel)
    return ws, proj


def add_runs(path: Path, name: str, key_features: Sequence[str],
             runs: Sequence[tuple[str, Snapshot]], protected: Sequence[str] = ()) -> None:  # fmt: skip
    ws, proj = project(path, name, key_features, protected)
    for run_name, snapshot in runs:
        ws.add_run(proj.id, snapshot, name=run_name)
