"""`make tune-worker`: join the running Optuna study (same data + params -> same study name)
from another process or machine. Share OPTUNA_STORAGE (PostgreSQL) and MLFLOW_TRACKING_URI
with the `dvc repro` that started it; the study stops once all workers together reach
train.n_trials. Each worker samples with its own seed, and TPE's constant liar keeps
concurrent workers from proposing the same point."""

from __future__ import annotations

import argparse
import logging
import os
import pickle

import mlflow
import pandas as pd

from pipelines import paths
from riskloop.cli import run_main
from riskloop.settings import load_params
from training import fit, search
from training.tracking import connect, dvc_data_hash

log = logging.getLogger("tune-worker")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--seed", type=int, default=None, help="sampler seed (default: from the process id)"
    )
    args = ap.parse_args()
    params = load_params()
    tr = params.train
    fit.check_device(tr)
    client, exp_id, _ = connect(params.registry)
    with open(paths.BUILDER, "rb") as fh:
        names = pickle.load(fh).feature_names_
    frames = {n: pd.read_parquet(paths.FEATURES / f"{n}.parquet") for n in ("train", "valid")}
    target = params.data.target
    data = search.tuning(frames["train"], frames["valid"], names, target, tr)
    name = search.study_name(params, dvc_data_hash())
    seed = args.seed if args.seed is not None else tr.seed + os.getpid()
    study = search.open_study(name, tr, seed)
    parents = mlflow.search_runs([exp_id], filter_string=f"tags.`{search.STUDY_TAG}` = '{name}' "
                                 "and tags.`riskloop.role` = 'study'", order_by=["start_time DESC"],
                                 max_results=1, output_format="list")  # fmt: skip
    parent = parents[0].info.run_id if parents else None
    logger = search.TrialLogger(client, exp_id, parent, name)
    before = search.finished(study)
    search.optimize(
        study, search.make_objective(data, tr, fit.monotone_vector(tr, names), logger), tr
    )
    log.info(
        "study %s: %d -> %d finished trials (parent run %s)",
        name,
        before,
        search.finished(study),
        parent,
    )


if __name__ == "__main__":
    run_main(main)
