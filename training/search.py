"""Optuna TPE search over XGBoost parameters with pruning.

Trials are logged as MLflow child runs through MlflowClient with an explicit parent id:
`start_run(nested=True)` loses its parent under `n_jobs>1` (thread-local run stack).
Many workers on many machines share one study through the Optuna storage (PostgreSQL in
production); `make tune-worker` joins the same study by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna_integration import XGBoostPruningCallback
from sklearn.model_selection import StratifiedKFold

from riskloop import stores
from riskloop.settings import Params, TrainSettings

log = logging.getLogger(__name__)
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY_TAG = "riskloop.study"


def study_name(params: Params, data_hash: str) -> str:
    """Same data + same search settings -> same study, so workers can find it by name."""
    key = json.dumps({"data": data_hash, "split": params.split.model_dump(),
                      "features": params.features.model_dump(),
                      "train": params.train.model_dump(exclude={"n_jobs", "nthread", "device"})},
                     sort_keys=True, default=str)  # fmt: skip
    return f"{params.registry.model_name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def storage(url: str | None = None) -> RDBStorage:
    """RDB storage with heartbeats: a trial of a worker that died is marked failed and
    retried once instead of being lost as RUNNING forever."""
    url = url or stores.optuna_storage()
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=30, grace_period=90,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))  # fmt: skip


def base_xgb_params(train: TrainSettings, monotone: tuple[int, ...], seed: int) -> dict:
    return {
        "objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist",
        "device": train.device, "nthread": train.nthread, "seed": seed,
        "monotone_constraints": "(" + ",".join(str(m) for m in monotone) + ")",
    }  # fmt: skip


def suggest(trial: optuna.Trial, train: TrainSettings) -> dict:
    out = {}
    for name, r in train.search_space.items():
        if r.int:
            out[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            out[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return out


@dataclass
class TrialLogger:
    """Logs one MLflow child run per trial under an explicit parent (thread-safe)."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str | None
    study: str

    def log(self, trial: optuna.Trial | optuna.trial.FrozenTrial, values: dict, state: str) -> None:
        tags = {STUDY_TAG: self.study, "optuna.trial": str(trial.number), "optuna.state": state,
                "worker": f"{socket.gethostname()}:{os.getpid()}"}  # fmt: skip
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial.number}", tags=tags
        )
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()],
            params=[Param(k, str(v)) for k, v in trial.params.items()],
            tags=[RunTag("mlflow.runName", f"trial-{trial.number}")],
        )
        self.client.set_terminated(run.info.run_id, "FINISHED" if state != "FAIL" else "FAILED")


@dataclass(frozen=True)
class Tuning:
    """What each trial is scored on. Normally the valid split (early stopping and the score);
    with fewer than `train.tune_cv_below_rows` rows of train+valid, the mean AUC over
    `train.cv_folds` stratified folds of train+valid: a validation split of a few hundred rows
    chooses by noise (German credit: 200 rows, bench/RESULTS.md)."""

    dtrain: xgb.DMatrix  # the train split, or train+valid for CV
    dvalid: xgb.DMatrix | None  # None for CV
    folds: list[tuple[np.ndarray, np.ndarray]] | None
    train_rows: int  # rows a trial's booster learns from (its rounds scale from these)

    @property
    def mode(self) -> str:
        return "valid split" if self.folds is None else f"{len(self.folds)}-fold CV"


@dataclass(frozen=True)
class DistributedTuning:
    """Trials scored on a Dask cluster (compute.engine dask): `score(params)` trains on the
    workers, early-stopped on the valid split (training.distributed.tuning_score)."""

    score: Callable[[dict], tuple[float, int]]
    train_rows: int
    folds: None = None
    mode: str = "valid split, on Dask"


def tuning(train_frame: pd.DataFrame, valid_frame: pd.DataFrame, names: list[str], target: str,
           settings: TrainSettings) -> Tuning:  # fmt: skip
    n = len(train_frame) + len(valid_frame)
    if settings.tune_cv_below_rows is None or n >= settings.tune_cv_below_rows:
        return Tuning(xgb.DMatrix(train_frame[names], label=train_frame[target]),
                      xgb.DMatrix(valid_frame[names], label=valid_frame[target]), None,
                      len(train_frame))  # fmt: skip
    both = pd.concat([train_frame, valid_frame], ignore_index=True)
    y = both[target].to_numpy()
    folds = list(StratifiedKFold(settings.cv_folds, shuffle=True,
                                 random_state=settings.seed).split(both[names], y))  # fmt: skip
    return Tuning(xgb.DMatrix(both[names], label=y), None, folds,
                  n * (settings.cv_folds - 1) // settings.cv_folds)  # fmt: skip


def _score(
    params: dict, data: Tuning | DistributedTuning, train: TrainSettings, trial: optuna.Trial
) -> tuple[float, int]:
    """(AUC, best iteration) of one trial's parameters, early-stopped."""
    if isinstance(data, DistributedTuning):
        return data.score(params)
    rounds, stop = train.max_boost_rounds, train.early_stopping_rounds
    if data.folds is None:
        callbacks = [XGBoostPruningCallback(trial, "valid-auc")] if train.pruning else []
        booster = xgb.train(params, data.dtrain, num_boost_round=rounds, evals=[(data.dvalid, "valid")],
                            early_stopping_rounds=stop, callbacks=callbacks, verbose_eval=False)  # fmt: skip
        return float(booster.best_score), int(booster.best_iteration)
    callbacks = [XGBoostPruningCallback(trial, "test-auc")] if train.pruning else []
    history = xgb.cv(params, data.dtrain, num_boost_round=rounds, folds=data.folds,
                     early_stopping_rounds=stop, callbacks=callbacks, verbose_eval=False)  # fmt: skip
    # the history ends at the best round (early stopping trims it)
    return float(history["test-auc-mean"].iloc[-1]), len(history) - 1


def make_objective(data: Tuning | DistributedTuning, train: TrainSettings, monotone: tuple[int, ...],
                   logger: TrialLogger | None):  # fmt: skip
    def objective(trial: optuna.Trial) -> float:
        params = {**base_xgb_params(train, monotone, train.seed), **suggest(trial, train)}
        try:
            auc, best_iteration = _score(params, data, train, trial)
        except optuna.TrialPruned:
            if logger:
                logger.log(trial, {}, "PRUNED")
            raise
        trial.set_user_attr("best_iteration", best_iteration)
        if logger:
            metric = "valid_auc" if data.folds is None else "cv_auc"
            logger.log(trial, {metric: auc, "best_iteration": best_iteration}, "COMPLETE")
        return auc

    return objective


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Optuna callback: one line per finished trial of this process (trial k of n, its
    AUC or its pruning, the best so far, time elapsed and left), instead of silence."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials, self.start, self.ran = n_trials, time.monotonic(), 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran += 1
        done = finished(study)
        elapsed = time.monotonic() - self.start
        left = elapsed / self.ran * max(self.n_trials - done, 0)
        got = (
            f"AUC {trial.value:.4f}"
            if trial.state == TrialState.COMPLETE
            else trial.state.name.lower()
        )
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no completed trial yet"
        log.info("trial %d/%d: %s · %s · %s elapsed, ~%s left", min(done, self.n_trials),
                 self.n_trials, got, best, _duration(elapsed), _duration(left))  # fmt: skip


def optimize(study: optuna.Study, objective, train: TrainSettings) -> bool:
    """Run trials until the study as a whole (all workers together) has n_trials done; the
    trial count is the budget. Returns True, loudly, when train.timeout_s cut it short."""
    remaining = train.n_trials - finished(study)
    if remaining <= 0:
        log.info("study %s already has %d finished trials", study.study_name, finished(study))
        return False
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log.info("study %s: %d trial(s) to run (n_trials %d)", study.study_name, remaining,
             train.n_trials)  # fmt: skip
    study.optimize(objective, timeout=train.timeout_s, n_jobs=train.n_jobs,
                   callbacks=[MaxTrialsCallback(train.n_trials, states=DONE_STATES),
                              Progress(train.n_trials)], gc_after_trial=False)  # fmt: skip
    done = finished(study)
    if done < train.n_trials:
        log.warning("STUDY CUT SHORT: train.timeout_s=%gs stopped study %s after %d of %d trials; "
                    "the model now depends on how busy the machine was (recorded on the version "
                    "as study_truncated). Unset train.timeout_s to make the trial count the budget.",
                    train.timeout_s, study.study_name, done, train.n_trials)  # fmt: skip
        return True
    return False


def open_study(name: str, train: TrainSettings, seed: int, url: str | None = None) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, train.n_trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=30)
    return optuna.create_study(study_name=name, storage=storage(url), sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)  # fmt: skip
