"""The model card as one self-contained HTML page: inline CSS, figures as inline SVG drawn by
matplotlib, no script and no external URL, so it opens offline, in MLflow's artifact viewer
and on paper. Pure: the inputs in `CardData`, a string out."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from serving.scoring import DECISIONS, Cutoffs, decisions, risk_bands, risk_scores
from training.card import MetricIntervals, MonotoneCheck, gate_count
from training.gates import GateResult, group_table
from training.metrics import calibration_table, classification_metrics, roc_points

COLORS = ("#1f4e99", "#d9730d")  # challenger, champion: the same in every figure and table
STYLES = ("-", "--")


@dataclass(frozen=True)
class ModelScores:
    """One model's probabilities of default on the test split and the cuts it is served with."""

    role: str  # challenger | champion
    version: str
    p: np.ndarray
    cut: Cutoffs

    @property
    def label(self) -> str:
        return f"{self.role} v{self.version}"

    @property
    def approved(self) -> np.ndarray:
        return risk_scores(self.p) < self.cut.review_from


@dataclass(frozen=True)
class Stability:
    """PSI of the challenger's PD, test split vs train split, over the train split's deciles."""

    psi: float
    train_shares: np.ndarray
    test_shares: np.ndarray
    train_rows: int
    test_rows: int


@dataclass(frozen=True)
class CardData:
    model_name: str
    y: np.ndarray
    challenger: ModelScores
    champion: ModelScores | None
    gates: Sequence[GateResult]
    verdict: str
    intervals: MetricIntervals
    purpose: str
    lineage: dict[str, str]  # shown in this order
    training_params: dict[str, object]
    approval_rule: str
    groups: dict[str, pd.Series]  # protected attribute -> group label per test row (None: absent)
    bands: dict[str, int]
    importance: pd.DataFrame  # feature, mean_abs_contribution
    reason_texts: dict[str, str | None]
    monotone: Sequence[MonotoneCheck]
    stability: Stability | None
    calibration_bins: int = 10
    decision_threshold: float = 0.5  # only for the log-loss/ECE row's metrics call
    min_group_rows: int = 1  # smaller protected groups are listed, not gated
    min_approval_ratio: float | None = None
    test_rows: int | None = None  # the whole test split's rows when `y` is a sample of it

    @property
    def models(self) -> list[ModelScores]:
        return [self.challenger, *([self.champion] if self.champion else [])]


# ---------------------------------------------------------------- formatting
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "&ndash;"
    return f"{value:.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "&ndash;" if value is None or not np.isfinite(value) else f"{value:.{digits}%}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_INTERVAL = re.compile(r"^[(\[](-?[\d.]+), (-?[\d.]+)[)\]]$")


def group_label(label: str) -> str:
    """A quartile group reads `21-28`, not pandas' `(20.999, 28.0]` (ages: whole years)."""
    m = _INTERVAL.match(label)
    if not m:
        return label
    low, high = float(m[1]), float(m[2])
    if high.is_integer():  # whole-number column: (20.999, 28.0] holds 21..28
        return f"{int(np.floor(low)) + 1}-{int(high)}"
    return f"{low:g}-{high:g}"


# ---------------------------------------------------------------- figures
def _figure(width: float = 3.6, height: float = 3.2) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height))  # no pyplot: no global figure state to leak
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def _svg(fig: Figure, name: str) -> str:
    """The figure as an inline <svg>: text kept as text (searchable, printable); no XML
    prologue, DOCTYPE (it names an external DTD), metadata or namespace declarations (HTML
    knows SVG's, and a page without a single URL is easy to check); ids salted by name so
    two figures on one page never share one."""
    buf = io.StringIO()
    rc = {"svg.fonttype": "none", "svg.hashsalt": name, "font.sans-serif": ["DejaVu Sans"]}
    with rc_context(rc):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)
    return re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", text)


def _curves(card: CardData) -> str:
    y = card.y
    roc_fig, roc = _figure()
    pr_fig, pr = _figure()
    cal_fig, cal = _figure()
    for i, m in enumerate(card.models):
        style = {"color": COLORS[i], "linestyle": STYLES[i], "linewidth": 1.4}
        points = roc_points(y, m.p)
        auc = roc_auc_score(y, m.p)
        roc.plot(points["fpr"], points["tpr"], label=f"{m.label} (AUC {auc:.3f})", **style)
        precision, recall, _ = precision_recall_curve(y, m.p)
        pr.plot(recall, precision, label=f"{m.label} (AP {average_precision_score(y, m.p):.3f})", **style)  # fmt: skip
        table = calibration_table(y, m.p, card.calibration_bins)
        cal.plot(table["mean_predicted"], table["observed_rate"], marker="o", markersize=3,
                 label=m.label, **style)  # fmt: skip
    roc.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.axhline(float(np.mean(y)), linestyle=":", color="grey", linewidth=1, label="default rate")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    cal.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    cal.set(xlabel="mean predicted PD", ylabel="observed default rate",
            title=f"Calibration ({card.calibration_bins} bins)")  # fmt: skip
    for ax in (roc, pr, cal):
        ax.legend(loc="lower right" if ax is roc else "upper right" if ax is pr else "upper left",
                  fontsize=7, frameon=False)  # fmt: skip
    figs = (_svg(roc_fig, "roc"), _svg(pr_fig, "pr"), _svg(cal_fig, "calibration"))
    return '<div class="figs">' + "".join(f"<figure>{f}</figure>" for f in figs) + "</div>"


def _distribution_svg(card: CardData) -> str:
    fig, ax = _figure(5.2, 2.8)
    edges = np.arange(0, 105, 5)
    for i, m in enumerate(card.models):
        counts, _ = np.histogram(risk_scores(m.p), bins=edges)
        ax.stairs(counts / len(m.p), edges, color=COLORS[i], linestyle=STYLES[i], linewidth=1.4,
                  label=m.label)  # fmt: skip
    cut = card.challenger.cut
    for value, name in ((cut.review_from, "review from"), (cut.decline_from, "decline from")):
        ax.axvline(value, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{name} {value}", (value, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize=7, color="grey")  # fmt: skip
    ax.set(xlabel="risk score (PD in %)", ylabel="share of test rows", xlim=(0, 100),
           title="Score distribution")  # fmt: skip
    ax.legend(fontsize=7, frameon=False, loc="center right")
    return _svg(fig, "score_distribution")


def _stability_svg(s: Stability) -> str:
    fig, ax = _figure(4.2, 2.6)
    x = np.arange(len(s.train_shares))
    ax.bar(x - 0.2, s.train_shares, 0.4, color="#999999", label=f"train ({s.train_rows:,})")
    ax.bar(x + 0.2, s.test_shares, 0.4, color=COLORS[0], label=f"test ({s.test_rows:,})")
    top = float(max(s.train_shares.max(), s.test_shares.max()))
    ax.set(xlabel="decile of the train split's PD", ylabel="share of rows", xticks=x,
           xticklabels=[str(i + 1) for i in x], ylim=(0, top * 1.3),
           title=f"Score stability: PSI {s.psi:.3f}")  # fmt: skip
    ax.legend(fontsize=7, frameon=False, loc="upper center", ncols=2)
    return _svg(fig, "stability")


# ---------------------------------------------------------------- sections
def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def _gate_bound(g: GateResult) -> str:
    return (
        "&ndash;"
        if g.threshold is None
        else f"{'≥' if g.bound == 'min' else '≤'} {g.threshold:.3f}"
    )


def _gates(card: CardData) -> str:
    rows = [[f"<code>{_esc(g.name)}</code>", _num(g.value), _gate_bound(g),
             f'<span class="v {g.verdict.lower()}">{g.verdict}</span>',
             f'<span class="detail">{_esc(g.detail)}</span>'] for g in card.gates]  # fmt: skip
    counts = {v: sum(g.verdict == v for g in card.gates) for v in ("pass", "FAIL", "skip")}
    intro = (f"<p>{counts['pass']} pass, {counts['FAIL']} fail, {counts['skip']} skipped (too few rows "
             f"to judge; a skip does not block): {gate_count(card.gates)} clear. The gates "
             "<code>riskloop promote</code> applies, computed on this test split.</p>")  # fmt: skip
    return intro + _table(["gate", "value", "threshold", "verdict", "detail"], rows, "gates")


def _lineage(card: CardData) -> str:
    rows = [[_esc(k), _esc(v)] for k, v in card.lineage.items()]
    params = ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in card.training_params.items())
    rows.append(["training parameters", f'<span class="detail">{params}</span>'])
    return f"<p>{_esc(card.purpose)}</p>" + _table(["", ""], rows, "kv")


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


# metric: (label, digits); arrows say which way is better
BOOTSTRAPPED = {"roc_auc": ("ROC AUC ↑", 3), "gini": ("Gini ↑", 3), "ks": ("KS ↑", 3),
                "brier": ("Brier ↓", 4)}  # fmt: skip
POINT_ONLY = {"log_loss": ("log loss ↓", 4), "ece": ("ECE ↓", 4)}


def _metrics(card: CardData) -> str:
    iv, level = card.intervals, f"{card.intervals.level:.0%}"
    points = [classification_metrics(card.y, m.p, card.decision_threshold, card.calibration_bins)
              for m in card.models]  # fmt: skip
    header = ["metric", *[_esc(m.label) for m in card.models]]
    if iv.difference:
        header.append("difference")
    rows = []
    for key, (name, digits) in BOOTSTRAPPED.items():
        row = [name, iv.candidate[key].text(digits)]
        if iv.champion and iv.difference:
            row += [iv.champion[key].text(digits), iv.difference[key].text(digits, signed=True)]
        rows.append(row)
    for key, (name, digits) in POINT_ONLY.items():
        row = [name, *[_num(p[key], digits) for p in points]]
        if iv.difference:
            row.append(_signed(points[0][key] - points[1][key], digits))
        rows.append(row)
    rows.append(["mean PD · default rate", *[f"{_pct(p['mean_pd'])} · {_pct(p['default_rate'])}"
                                             for p in points]] + (["&ndash;"] if iv.difference else []))  # fmt: skip
    paired = (
        " The difference is paired (both models on the same resamples)." if iv.difference else ""
    )
    rows_text = f"Test split, {len(card.y):,} rows."
    if card.test_rows and card.test_rows > len(card.y):
        rows_text = (f"A seeded sample of {len(card.y):,} of the test split's {card.test_rows:,} rows "
                     "(evaluate.sample_rows), as everywhere on this card; the AUC gates, "
                     "metrics.json and the MLflow run's test metrics count every row.")  # fmt: skip
    note = (f"<p class=note>{rows_text} Brackets: {level} percentile bootstrap "
            f"interval over {iv.resamples:,} resamples of the rows.{paired}</p>")  # fmt: skip
    return _table(header, rows, "metrics") + note


def _mix(card: CardData) -> str:
    order = [b for b, _ in sorted(card.bands.items(), key=lambda kv: kv[1])]
    header = ["", *[f"{_esc(m.label)}<br>{h}" for m in card.models for h in ("share", "defaults")]]
    per_model = []
    for m in card.models:
        s = risk_scores(m.p)
        per_model.append((np.asarray(risk_bands(s, card.bands)), np.asarray(decisions(s, m.cut))))
    rows = []
    for kind, names in (("band", order), ("decision", list(DECISIONS))):
        for name in names:
            cells = []
            for bands, decided in per_model:
                hit = (bands if kind == "band" else decided) == name
                rate = float(card.y[hit].mean()) if hit.any() else float("nan")
                cells += [_pct(float(hit.mean())), _pct(rate)]
            rows.append([f"{kind} <b>{_esc(name)}</b>", *cells])
    cuts = "; ".join(f"{_esc(m.label)} reviews from {m.cut.review_from} and declines from "
                     f"{m.cut.decline_from}" for m in card.models)  # fmt: skip
    bands = ", ".join(f"{_esc(b)} from {card.bands[b]}" for b in order)
    note = (f"<p class=note>Share of test rows and their observed default rate. Risk score = PD in "
            f"percent; bands: {bands}. Cuts as served: {cuts}.</p>")  # fmt: skip
    return (
        f'<div class="row"><figure>{_distribution_svg(card)}</figure>'
        f"<div>{_table(header, rows, 'mix')}{note}</div></div>"
    )


def _stability(card: CardData) -> str:
    s = card.stability
    if s is None:
        return "<p>Not measured (no train-split scores).</p>"
    reading = "stable" if s.psi < 0.1 else "watch" if s.psi < 0.25 else "shifted"
    return (f'<div class="row"><figure>{_stability_svg(s)}</figure><p>PSI of the challenger\'s PD, '
            f"test split vs train split: <b>{s.psi:.3f}</b> ({reading}; the credit-risk convention "
            "reads &lt; 0.1 stable, 0.1&ndash;0.25 watch, ≥ 0.25 shifted), over the train split's "
            "deciles of PD. Train scores are in-sample, so an over-fitted model's are sharper than "
            "its test scores: this catches that as well as a population shift.</p></div>")  # fmt: skip


def _drivers(card: CardData) -> str:
    imp = card.importance
    top = float(imp["mean_abs_contribution"].max()) if len(imp) else 1.0
    rows = [[f"<code>{_esc(r.feature)}</code>",
             f'<span class="bar" style="width:{100 * r.mean_abs_contribution / top:.0f}px"></span> '
             f"{r.mean_abs_contribution:.3f}", _esc(card.reason_texts.get(r.feature) or "")]
            for r in imp.itertuples()]  # fmt: skip
    note = ("<p class=note>The challenger's mean absolute TreeSHAP contribution on the test split; "
            "the reason text is what the service sends when the feature raises a score.</p>")  # fmt: skip
    return (
        _table(["feature", "mean |SHAP| (log-odds)", "reason text served"], rows, "drivers") + note
    )


def _verdict_cell(passed: bool) -> str:
    return f'<span class="v {"pass" if passed else "fail"}">{"pass" if passed else "FAIL"}</span>'


def _monotonicity(card: CardData) -> str:
    if not card.monotone:
        return "<p>No monotone constraints in <code>train.monotone_constraints</code>.</p>"
    rows = [[f"<code>{_esc(c.feature)}</code>", "risk rises" if c.direction > 0 else "risk falls",
             str(c.grid_points), f"{c.violating_rows} of {c.rows}",
             "&ndash;" if c.passed else _num(c.worst, 4), _verdict_cell(c.passed)]
            for c in card.monotone]  # fmt: skip
    held = sum(c.passed for c in card.monotone)
    return (f"<p>{held} of {len(card.monotone)} constraints hold. Each sampled test row's margin as "
            "the feature walks a grid of its observed quantiles, everything else fixed, may only "
            "move in the constrained direction.</p>" + _table(["feature", "constraint", "grid points",
            "rows violating", "worst move (log-odds)", "verdict"], rows))  # fmt: skip


def _gate_named(card: CardData, name: str) -> GateResult | None:
    return next((g for g in card.gates if g.name == name), None)


def _attribute_heading(card: CardData, attribute: str, groups: pd.Series) -> str:
    carried = int(groups.notna().sum())
    about = (
        f"{carried:,} of {len(groups):,} test rows carry it ({carried / max(len(groups), 1):.0%})"
    )
    for name in (f"approval_ratio[{attribute}]", f"auc_gap[{attribute}]"):
        gate = _gate_named(card, name)
        if gate is not None:
            about += f"; {_esc(gate.name)} {_num(gate.value)} {_gate_bound(gate)}: {gate.verdict}"
    return f"<h3>{_esc(attribute)} <small>{about}</small></h3>"


def _fairness(card: CardData) -> str:
    if not card.groups:
        return "<p>No protected attributes in <code>data.protected</code>.</p>"
    bound = (
        ""
        if card.min_approval_ratio is None
        else f" (gate: at least {card.min_approval_ratio:.2f})"
    )
    parts = [f"<p>{_esc(card.approval_rule)}; each model with its own cuts. Ratio: the group's approval "
             f"rate over the highest gated group's{bound}; groups under {card.min_group_rows:,} rows "
             "are listed, not gated (in italics).</p>"]  # fmt: skip
    for attribute, groups in card.groups.items():
        tables = [group_table(groups, card.y, m.p, m.approved) for m in card.models]
        gated = (tables[0]["n"] >= card.min_group_rows).to_numpy()
        header = ["group", "rows", "default rate"]
        for m in card.models:
            header += [f"{_esc(m.label)}<br>approval", "ratio", "AUC"]
        rows = []
        for i, r in enumerate(tables[0].itertuples()):
            name = _esc(group_label(r.group))
            row = [
                name if gated[i] else f"<i>{name}</i>",
                f"{r.n:,}",
                _pct(r.defaults / max(r.n, 1)),
            ]
            for t in tables:
                rates = t["approval_rate"].to_numpy()
                top = float(rates[gated].max()) if gated.any() else float("nan")
                ratio = rates[i] / top if gated[i] and top > 0 else float("nan")
                row += [_pct(rates[i]), _num(ratio, 2), _num(t["roc_auc"].iloc[i])]
            rows.append(row)
        parts.append(_attribute_heading(card, attribute, groups) + _table(header, rows))
    return "".join(parts)


CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;
 max-width:1180px;margin:16px auto;padding:0 16px}
h1{font-size:20px;margin:0 0 6px}h2{font-size:15px;border-bottom:1px solid #ccc;margin:18px 0 6px;
 padding-bottom:2px}h3{font-size:13px;margin:10px 0 4px}small{color:#666;font-weight:normal}
.verdict{padding:8px 12px;border-radius:4px;font-size:15px;font-weight:600}
.verdict.pass{background:#e6f4ea;border-left:5px solid #1e8e3e}
.verdict.fail{background:#fce8e6;border-left:5px solid #d93025}
table{border-collapse:collapse;margin:4px 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e4e4e4;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}
table.kv thead{display:none}table.kv td:first-child{color:#555;white-space:nowrap}
.v{font-weight:700}.v.pass{color:#1e8e3e}.v.fail{color:#d93025}.v.skip{color:#777}
.detail,.note{color:#555;font-size:11.5px}code{font-size:12px}
.bar{display:inline-block;height:9px;background:#1f4e99;vertical-align:middle}
.figs,.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.row>p,.row>div{flex:1;min-width:320px}
figure{margin:0}svg{max-width:100%;height:auto}
nav{font-size:12px;color:#555}nav a{color:#1f4e99;margin-right:8px}
@media print{body{margin:0;max-width:none}section{break-inside:avoid}nav{display:none}}
"""

SECTIONS: tuple[tuple[str, str, Callable[[CardData], str]], ...] = (
    ("gates", "Promotion gates", _gates),
    ("lineage", "Purpose and lineage", _lineage),
    ("metrics", "Metrics on the test split", _metrics),
    ("curves", "ROC, precision-recall, calibration", _curves),
    ("scores", "Scores, bands and decisions", _mix),
    ("stability", "Stability", _stability),
    ("drivers", "Top drivers", _drivers),
    ("monotonicity", "Monotonicity", _monotonicity),
    ("fairness", "Fairness", _fairness),
)


def render(card: CardData) -> str:
    """The whole page."""
    c = card.challenger
    state = "fail" if any(not g.passed for g in card.gates) else "pass"
    title = f"{card.model_name} v{c.version} — model card"
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in SECTIONS)
    body = "".join(_section(t, fn(card), a) for a, t, fn in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f'<p class="verdict {state}">{_esc(card.verdict)}</p><nav>{nav}</nav>{body}'
            "</body></html>\n")  # fmt: skip
