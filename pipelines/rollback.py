"""`make rollback`: restore the previous champion (recorded on the current one)."""

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
    print(f"{registry.name} @champion: v{old} -> v{new}")


if __name__ == "__main__":
    run_main(main)
