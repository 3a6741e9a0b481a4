"""`make challenger VERSION=N`: point @challenger at an existing registered version, on purpose.

A workspace `dvc repro` (or a retrain) makes its version the challenger; a `dvc exp run` never
does: its version is tagged `experiment` (the experiment's name) and `experiment_baseline`,
and stays out of review until someone names it here. Changes the registry's @challenger alias
(what reviewers open and a plain `make promote` promotes), tags the version with who, when,
why and the previous challenger, and appends an audit entry (`make history`). Refuses a
version that does not exist or was rolled back (promote that by name: `make promote VERSION=`)."""

from __future__ import annotations

import argparse

from riskloop.cli import run_main
from riskloop.settings import load_params
from training.tracking import connect


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("version", help="the registered version to make @challenger (e.g. 7)")
    ap.add_argument("--reason", default="chosen by name (make challenger)", help="why (audited)")
    args = ap.parse_args()
    params = load_params()
    _, _, registry = connect(params.registry)
    alias = params.registry.challenger_alias
    previous, version = registry.move_challenger(args.version, args.reason)
    if previous == version:
        print(f"{registry.name} @{alias} is already v{version}; nothing to do")
        return
    print(f"{registry.name} @{alias} -> v{version}"
          + (f" (was v{previous})" if previous else " (first challenger)"))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
