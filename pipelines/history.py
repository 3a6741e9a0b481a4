"""`make history`: every promotion and rollback of the registered model, oldest first (the
append-only audit trail kept in the registered model's `riskloop.audit.*` tags, which the
MLflow UI shows on the model's page). `--json` for programs."""

from __future__ import annotations

import argparse
import json

from riskloop.cli import run_main
from riskloop.settings import load_params
from training.tracking import connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="one JSON document")
    args = ap.parse_args()
    params = load_params()
    _, _, registry = connect(params.registry)
    entries = registry.history()
    champion, challenger = registry.champion(), registry.challenger()
    if args.json:
        print(json.dumps({"model": registry.name, "champion": champion and str(champion.version),
                          "challenger": challenger and str(challenger.version), "history": entries},
                         indent=2))  # fmt: skip
        return
    print(f"{registry.name}: @champion v{champion.version if champion else '-'}, "
          f"@challenger v{challenger.version if challenger else '-'}")  # fmt: skip
    if not entries:
        print("no promotion or rollback recorded yet")
    for e in entries:
        moved = f"v{e['from'] or '-'} -> v{e['to'] or '-'}"
        print(f"{e['at']}  {e['action']:<10} {moved:<12} by {e['by']}: {e['reason']}")


if __name__ == "__main__":
    run_main(main)
