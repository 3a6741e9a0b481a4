"""Stage `train`: Optuna search (one MLflow parent run per study, a child run per trial),
refit of the best parameters on train+valid, CV of that configuration, then ONE MLflow
model (feature builder + booster, returning probabilities) registered as a new version: a
workspace run (`dvc repro`, a retrain) makes it @challenger, a `dvc exp run` tags it with the
experiment's name and leaves @challenger alone (training/registry.py `Origin`). The model
carries its contract, golden batch and out-of-sample reference (training/package.py): the
test split is scored here only to package that reference, never to choose anything."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import warnings
from importlib.metadata import version

import mlflow
import pandas as pd
import xgboost as xgb

from features.transform import FeatureBuilder
from pipelines import lineage, paths
from riskloop import stores
from riskloop.cli import run_main
from riskloop.compute import dask_client
from riskloop.errors import RiskloopError
from riskloop.settings import Params, load_params
from training import distributed, fit, search
from training.model import CreditRiskModel
from training.package import log_model
from training.registry import PIPELINE_FILES, registration_summary, training_origin
from training.tracking import connect, dvc_data_hash, git_commit

log = logging.getLogger("train")
MODEL_REQUIREMENTS = ["mlflow", "xgboost-cpu", "pandas", "numpy", "scikit-learn", "pyyaml", "pydantic",
                      "pydantic-settings"]  # fmt: skip


def pinned(packages: list[str]) -> list[str]:
    return [f"{p}=={version(p)}" for p in packages]


def pipeline_modified() -> bool | None:
    """Whether dvc.yaml or params.yaml differ from git HEAD (or are not committed at all);
    None outside a git checkout."""
    cmd = ["git", "status", "--porcelain", "--untracked-files=all", "--", *PIPELINE_FILES]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return None
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


class LocalData:
    """The features in this process, whole frames (compute.engine local)."""

    def __init__(self, params: Params) -> None:
        self.target, self.train_settings = params.data.target, params.train
        self.frames = {
            n: pd.read_parquet(paths.FEATURES / f"{n}.parquet") for n in ("train", "valid")
        }

    def tuning(self, names: list[str]) -> search.Tuning:
        return search.tuning(self.frames["train"], self.frames["valid"], names, self.target,
                             self.train_settings)  # fmt: skip

    def rows(self) -> int:
        return sum(len(f) for f in self.frames.values())

    def refit(
        self, names: list[str], params: dict, rounds: int
    ) -> tuple[float, float, xgb.Booster]:
        """CV of the chosen configuration on train+valid, then its fit on them."""
        both = pd.concat(self.frames.values(), ignore_index=True)
        y = both[self.target].to_numpy()
        tr = self.train_settings
        cv_mean, cv_std = fit.cross_validate(both[names], y, params, rounds, tr.cv_folds, tr.seed)
        return cv_mean, cv_std, fit.fit_booster(both[names], y, params, rounds)

    def dataset_sample(self, split: str) -> pd.DataFrame:
        """The prepared split MLflow records as the run's input."""
        return pd.read_parquet(paths.PREPARED / f"{split}.parquet")


class DaskData(LocalData):
    """The features on a Dask cluster (compute.engine dask): trials, CV and the refit trained
    by the workers (training/distributed.py); small data (below train.tune_cv_below_rows) is
    tuned by CV in this process as on the local engine."""

    def __init__(self, client, params: Params) -> None:
        self.client, self.target, self.train_settings = client, params.data.target, params.train
        self.parts = {n: paths.parts(paths.FEATURES / f"{n}.parquet") for n in ("train", "valid")}
        self.frames = {}
        self.matrices = None

    def tuning(self, names: list[str]) -> search.Tuning | search.DistributedTuning:
        self.frames = {n: distributed.read(p, names, self.target) for n, p in self.parts.items()}
        limit = self.train_settings.tune_cv_below_rows
        if limit is not None and self.rows() < limit:
            self.frames = {n: f.compute() for n, f in self.frames.items()}
            return LocalData.tuning(self, names)
        dtrain = distributed.matrix(self.client, self.frames["train"], names, self.target)
        dvalid = distributed.matrix(
            self.client, self.frames["valid"], names, self.target, ref=dtrain
        )
        self.matrices = (dtrain, dvalid)
        return search.DistributedTuning(self._trial_score, len(self.frames["train"]))

    def _trial_score(self, params: dict) -> tuple[float, int]:
        dtrain, dvalid = self.matrices
        return distributed.tuning_score(self.client, dtrain, dvalid, params, self.train_settings)

    def refit(
        self, names: list[str], params: dict, rounds: int
    ) -> tuple[float, float, xgb.Booster]:
        import dask.dataframe as dd

        if isinstance(self.frames["train"], pd.DataFrame):  # small data, tuned in this process
            return LocalData.refit(self, names, params, rounds)
        tr = self.train_settings
        both = dd.concat(list(self.frames.values()))
        drawn = distributed.with_folds(self.client, both, tr.cv_folds, tr.seed)
        # one copy of the data on the workers from here: xgboost.dask needs each worker's share
        # in memory while it trains, and the tuning's frames and matrices would double it
        self.frames, self.matrices = {}, None
        cv_mean, cv_std = distributed.cross_validate(self.client, drawn, names, self.target, params,
                                                     rounds, tr.cv_folds)  # fmt: skip
        # the refit on every row: the fold column is not among `names`
        booster = distributed.fit_booster(self.client, drawn, names, self.target, params, rounds)
        return cv_mean, cv_std, booster

    def dataset_sample(self, split: str) -> pd.DataFrame:
        """The split's first part: MLflow profiles what it is given, and a split on Dask is
        not read into one process."""
        return pd.read_parquet(paths.parts(paths.PREPARED / f"{split}.parquet")[0])


def main() -> None:
    params = load_params()
    if params.compute.engine == "dask":
        with dask_client(params.compute) as client:
            train(params, DaskData(client, params))
    else:
        train(params, LocalData(params))


def train(params: Params, data: LocalData | DaskData) -> None:
    # the pipeline as it was when its params were read, not after a long search
    origin = training_origin(os.environ, pipeline_modified())
    tr = params.train
    fit.check_device(tr)
    client, exp_id, registry = connect(params.registry)
    with open(paths.BUILDER, "rb") as fh:
        builder: FeatureBuilder = pickle.load(fh)
    target = params.data.target
    names = builder.feature_names_
    monotone = fit.monotone_vector(tr, names)
    tuning = data.tuning(names)

    data_hash = dvc_data_hash()
    name = search.study_name(params, data_hash)
    study = search.open_study(name, tr, tr.seed)
    commit = git_commit()
    with mlflow.start_run(experiment_id=exp_id, run_name=f"train-{name}") as parent:
        run_id = parent.info.run_id
        mlflow.set_tags({search.STUDY_TAG: name, "riskloop.role": "study", "git_commit": commit,
                         "data_hash": data_hash, "optuna_storage": stores.redact(stores.optuna_storage()),
                         **origin.tags()})  # fmt: skip
        mlflow.log_params(
            {f"train.{k}": v for k, v in tr.model_dump(exclude={"search_space"}).items()}
        )
        logger = search.TrialLogger(client, exp_id, run_id, name)
        truncated = search.optimize(study, search.make_objective(tuning, tr, monotone, logger), tr)
        try:
            best = study.best_trial
        except ValueError as exc:
            raise RiskloopError(
                f"study {name} has no completed trial (all pruned or failed)"
            ) from exc

        best_params = {**search.base_xgb_params(tr, monotone, tr.seed), **best.params}
        rounds = fit.refit_rounds(best.user_attrs["best_iteration"], tuning.train_rows, data.rows())
        log.info("best trial %d (%s AUC %.4f): %d-fold CV and refit on train+valid, %d rounds",
                 best.number, tuning.mode, best.value, tr.cv_folds, rounds)  # fmt: skip
        cv_mean, cv_std, booster = data.refit(names, best_params, rounds)
        model = CreditRiskModel(builder, booster)

        summary = {"best_valid_auc": best.value, "cv_auc_mean": cv_mean, "cv_auc_std": cv_std,
                   "boost_rounds": rounds, "n_trials": search.finished(study)}  # fmt: skip
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        mlflow.log_metrics(summary)
        for split in ("train", "valid"):
            src = data.dataset_sample(split)
            with warnings.catch_warnings():  # a local path matches two equivalent source types
                warnings.simplefilter("ignore", UserWarning)
                ds = mlflow.data.from_pandas(src, source=str(params.data.raw_path.resolve()), targets=target,
                                             name=f"{split}@{data_hash[:8]}", digest=data_hash[:8])  # fmt: skip
                mlflow.log_input(ds, context="training" if split == "train" else "validation")
        test = lineage.test_split(params).frame  # its sample: the packaged reference
        lineage_info = {"data_hash": data_hash, "git_commit": commit, "study_name": name}
        info, carried = log_model(model, test, target, params.evaluate, lineage_info,
                                  pinned(MODEL_REQUIREMENTS))  # fmt: skip
        mlflow.log_dict(params.model_dump(mode="json"), "params.json")

    tags = {"git_commit": commit, "data_hash": data_hash, "study_name": name, "run_id": run_id,
            "params": params.train.model_dump_json(exclude={"search_space"}),
            "best_params": json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in best.params.items()}), "study_truncated": str(truncated).lower(), "tuned_on": tuning.mode,
            **{k: f"{v:.6g}" for k, v in summary.items()},
            **{k: carried[k] for k in ("model_sha256", "contract_sha", "feature_code_sha")}}  # fmt: skip
    before = registry.challenger()
    mv = registry.register(info.model_uri, {**tags, **origin.tags()}, origin.sets_challenger)
    # Deterministic content only (no run id, no registry version): a fresh clone's `dvc repro`
    # rewrites dvc.lock byte for byte. The evaluate stage finds the version by model_sha256.
    paths.write_json(paths.TRAIN_REPORT, {
        "model_name": registry.name, "study_name": name, "data_hash": data_hash,
        "best_params": best.params, "study_truncated": truncated, "model_sha256": carried["model_sha256"],
        "contract_sha": carried["contract_sha"], "feature_code_sha": carried["feature_code_sha"],
        "tuned_on": tuning.mode, **summary,
    })  # fmt: skip
    summary_line = registration_summary(registry.name, str(mv.version), origin, params.registry.challenger_alias,
                                        str(before.version) if before else None)  # fmt: skip
    log.info("%s; cv auc %.4f ± %.4f, test auc %.4f on the %d reference rows (the test split, "
             "or its sample above evaluate.sample_rows)", summary_line, cv_mean, cv_std,
             carried["test_metrics"]["roc_auc"], carried["reference_rows"])  # fmt: skip


if __name__ == "__main__":
    run_main(main)
