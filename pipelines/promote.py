"""`make promote`: move @champion to @challenger (or `--version N`) only if the gates in
params.yaml pass on the current test split: AUC floors, fairness between protected groups and
score stability (training/gates.py), each printed with its value, threshold and verdict.
Records who, when, why and the previous champion as version tags, and those with every gate's
figures as an audit entry (`make history`). `make promote` then deploys the new champion (`make deploy`).
A challenger that was rolled back is refused unless named with --version: the rollback is a
reviewer's decision, not something a plain promote undoes.
`--if-no-champion` (used by `make run`) promotes only when there is no champion yet."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from pipelines import lineage, samples
from pipelines.evaluate import headline_auc, headline_rows, score
from riskloop import package
from riskloop.cli import run_main
from riskloop.errors import PromotionRefused, RegistryError
from riskloop.settings import Params, load_params
from serving.scoring import cutoffs, risk_scores
from training.baseline import baseline_auc
from training.gates import GateResult, Scored, candidate_gates
from training.registry import Registry, version_uri
from training.report import protected_groups
from training.tracking import connect


def train_scores(
    params: Params, pkg: package.ModelPackage, train: pd.DataFrame
) -> tuple[np.ndarray, int]:
    """The candidate's PD on the train split less the production rows a retrain added, and
    how many those were: a newer population by design, of which the test split holds none;
    compared, they would refuse every retrain made under drift."""
    added = train[params.data.id_column].astype(str).isin(lineage.production_row_ids(params))
    return np.asarray(score(pkg, train[~added])[0], dtype=float), int(added.sum())


def gather(params: Params, registry: Registry, candidate: ModelVersion,
           champion: ModelVersion | None) -> Scored:  # fmt: skip
    """Score the current test split with the candidate and the champion (and the train split
    with the candidate, for the PSI gate): everything the gates read, from files and registry."""
    test_rows = lineage.test_split(params)
    test = test_rows.frame
    pkg = package.ModelPackage.download(version_uri(registry.name, candidate.version))
    p, _ = score(pkg, test)
    # the decision the service would give: its cuts resolved from the package's own reference
    cut = cutoffs(params.serving.decisions, pkg.reference_scores)
    approved = risk_scores(p) < cut.review_from
    rule = f"approve = risk_score < {cut.review_from}, v{candidate.version}'s review_from as served"
    champion_p, packages = None, {"challenger": (str(candidate.version), pkg)}
    if champion is not None:
        champion_pkg = package.ModelPackage.download(version_uri(registry.name, champion.version))
        champion_p = np.asarray(score(champion_pkg, test)[0], float)
        packages["champion"] = (str(champion.version), champion_pkg)
    whole = {}  # a sampled test split: the AUC gates count every row
    if test_rows.sampled:
        sample_p = {"challenger": p} | ({} if champion_p is None else {"champion": champion_p})
        whole = headline_auc(headline_rows(params, registry.name, test_rows, packages, sample_p))
    policy, train_p, train_added, baseline = params.promotion, None, 0, None
    if policy.max_score_psi is not None or policy.min_auc_over_baseline is not None:
        train = samples.read(params, "train").frame
        if policy.max_score_psi is not None:
            train_p, train_added = train_scores(params, pkg, train)
        if policy.min_auc_over_baseline is not None:
            baseline = baseline_auc(train, test, params.data)
    return Scored(y=test[params.data.target].to_numpy(), candidate=np.asarray(p, dtype=float),
                  approved=approved, approval_rule=rule, groups=protected_groups(test, params.data),
                  champion=champion_p, train=train_p, train_left_out=train_added,
                  baseline_auc=baseline, **whole)  # fmt: skip


def gate_candidate(params: Params, registry: Registry, candidate: ModelVersion,
                   champion: ModelVersion | None) -> list[GateResult]:  # fmt: skip
    """Every promotion gate for `candidate` (a model version) against `champion` (or None) on
    the current test split: what promote enforces, and what a model card or webhook shows."""
    return candidate_gates(gather(params, registry, candidate, champion), params.promotion)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reason", default="gated promotion (make promote)")
    ap.add_argument("--version", help="promote this version instead of @challenger (still gated)")
    ap.add_argument(
        "--if-no-champion", action="store_true", help="do nothing when a champion exists"
    )
    args = ap.parse_args()
    params = load_params()
    _, _, registry = connect(params.registry)
    candidate = registry.version(args.version) if args.version else registry.challenger()
    champion = registry.champion()
    if candidate is None:
        raise RegistryError(
            f"{registry.name} has no @{params.registry.challenger_alias}: run `dvc repro` first"
        )
    if champion is not None and (
        args.if_no_champion or str(champion.version) == str(candidate.version)
    ):
        print(f"{registry.name} @champion is v{champion.version}; nothing to do")
        return
    if candidate.tags.get("rolled_back") == "true" and not args.version:
        raise PromotionRefused(
            f"@{params.registry.challenger_alias} v{candidate.version} was rolled back "
            f"({candidate.tags.get('rolled_back_at')}, by {candidate.tags.get('rolled_back_by')}: "
            f"{candidate.tags.get('rollback_reason')}); promote it again only by name: "
            f"make promote VERSION={candidate.version} REASON=…"
        )
    scored = gather(params, registry, candidate, champion)
    gates = candidate_gates(scored, params.promotion)
    for g in gates:
        print(f"  {g.line()}")
    failed = [g for g in gates if not g.passed]
    if failed:
        raise PromotionRefused(f"v{candidate.version} not promoted: failed gate(s) "
                               f"{'; '.join(g.summary for g in failed)} (details above)")  # fmt: skip
    registry.move_champion(candidate.version, args.reason, champion.version if champion else None,
                           gates={g.name: g.record() for g in gates})  # fmt: skip
    registry.set_tags(
        candidate.version,
        {"promotion_test_auc": f"{scored.candidate_auc:.6g}", "rolled_back": "false"},
    )
    print(f"{registry.name} @champion -> v{candidate.version}"
          + (f" (was v{champion.version})" if champion else " (first champion)"))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
