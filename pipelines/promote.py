"""`make promote`: move @champion to @challenger (or `--version N`) only if the gates in
params.yaml pass on the current test split; records who, when, why and the previous champion
as version tags and as an audit entry (`make history`). `make promote` then deploys the new
champion (`make deploy`). A challenger that was rolled back is refused unless named with
--version: the rollback is a reviewer's decision, not something a plain promote undoes.
`--if-no-champion` (used by `make run`) promotes only when there is no champion yet."""

from __future__ import annotations

import argparse

import pandas as pd
from sklearn.metrics import roc_auc_score

from pipelines import lineage, paths
from pipelines.evaluate import score
from riskloop.cli import run_main
from riskloop.errors import PromotionRefused, RegistryError
from riskloop.settings import load_params
from training.baseline import baseline_auc
from training.gates import evaluate_gates
from training.registry import version_uri
from training.tracking import connect


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
    test, _ = lineage.test_split(params)
    y = test[params.data.target].to_numpy()

    def auc(version: str) -> float:
        return float(roc_auc_score(y, score(version_uri(registry.name, version), test)[0]))

    ch_auc = auc(candidate.version)
    cp_auc = auc(champion.version) if champion is not None else None
    baseline = None
    if params.promotion.min_auc_over_baseline is not None:
        train = pd.read_parquet(paths.PREPARED / "train.parquet")
        baseline = baseline_auc(train, test, params.data)
    gates = evaluate_gates(ch_auc, cp_auc, params.promotion, baseline)
    for g in gates:
        print(f"  [{'pass' if g.passed else 'FAIL'}] {g.name}: {g.detail}")
    failed = [g for g in gates if not g.passed]
    if failed:
        raise PromotionRefused(
            f"v{candidate.version} not promoted: gate {failed[0].name} failed ({failed[0].detail})"
        )
    registry.move_champion(candidate.version, args.reason, champion.version if champion else None,
                           gates={g.name: g.detail for g in gates})  # fmt: skip
    registry.set_tags(
        candidate.version, {"promotion_test_auc": f"{ch_auc:.6g}", "rolled_back": "false"}
    )
    print(f"{registry.name} @champion -> v{candidate.version}"
          + (f" (was v{champion.version})" if champion else " (first champion)"))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
