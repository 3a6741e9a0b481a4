"""`make promote`: move @champion to @challenger only if the gates in params.yaml pass on
the current test split; records who, when, why and the previous champion as version tags.
`--if-no-champion` (used by `make run`) promotes only when there is no champion yet."""

from __future__ import annotations

import argparse

from sklearn.metrics import roc_auc_score

from pipelines import lineage
from pipelines.evaluate import score
from riskloop.cli import run_main
from riskloop.errors import PromotionRefused, RegistryError
from riskloop.settings import load_params
from training.gates import evaluate_gates
from training.registry import version_uri
from training.tracking import connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reason", default="gated promotion (make promote)")
    ap.add_argument(
        "--if-no-champion", action="store_true", help="do nothing when a champion exists"
    )
    args = ap.parse_args()
    params = load_params()
    _, _, registry = connect(params.registry)
    challenger, champion = registry.challenger(), registry.champion()
    if challenger is None:
        raise RegistryError(
            f"{registry.name} has no @{params.registry.challenger_alias}: run `dvc repro` first"
        )
    if champion is not None and (
        args.if_no_champion or str(champion.version) == str(challenger.version)
    ):
        print(f"{registry.name} @champion is v{champion.version}; nothing to do")
        return
    test, _ = lineage.test_split(params)
    y = test[params.data.target].to_numpy()

    def auc(version: str) -> float:
        return float(roc_auc_score(y, score(version_uri(registry.name, version), test)[0]))

    ch_auc = auc(challenger.version)
    cp_auc = auc(champion.version) if champion is not None else None
    gates = evaluate_gates(ch_auc, cp_auc, params.promotion)
    for g in gates:
        print(f"  [{'pass' if g.passed else 'FAIL'}] {g.name}: {g.detail}")
    failed = [g for g in gates if not g.passed]
    if failed:
        raise PromotionRefused(
            f"v{challenger.version} not promoted: gate {failed[0].name} failed ({failed[0].detail})"
        )
    registry.move_champion(challenger.version, args.reason, champion.version if champion else None)
    registry.set_tags(challenger.version, {"promotion_test_auc": f"{ch_auc:.6g}"})
    print(f"{registry.name} @champion -> v{challenger.version}"
          + (f" (was v{champion.version})" if champion else " (first champion)"))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
