"""`make rollback`: restore the previous champion (recorded on the current one). The rolled-back
version is tagged `rolled_back` and keeps @challenger if it has it, so a reviewer sees it and a
plain `make promote` will not put it back; the move is an audit entry (`make history`).
`make rollback` then deploys the restored champion (`make deploy`)."""

from __future__ import annotations

import argparse

from riskloop.cli import run_main
from riskloop.settings import load_params
from training.tracking import connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reason", default="manual rollback (make rollback)")
    args = ap.parse_args()
    _, _, registry = connect(load_params().registry)
    old, new = registry.rollback(args.reason)
    print(f"{registry.name} @champion: v{old} -> v{new} (v{old} tagged rolled_back)")


if __name__ == "__main__":
    run_main(main)
