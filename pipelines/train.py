"""Stage `train`: Optuna search (one MLflow parent run per study, a child run per trial),
refit of the best parameters on train+valid, CV of that configuration, then ONE MLflow
model (feature builder + booster, returning probabilities) registered as @challenger."""

from __future__ import annotations

import logging
import pickle
import warnings
from importlib.metadata import version

import mlflow
import pandas as pd
import xgboost as xgb
from mlflow.models import infer_signature

from features.transform import FeatureBuilder
from pipelines import paths
from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import RiskloopError
from riskloop.settings import load_params
from training import fit, search
from training.model import CreditRiskModel
from training.tracking import connect, dvc_data_hash, git_commit

log = logging.getLogger("train")
# Code the pickled model needs at load time (bento, `mlflow models serve`, evaluate).
CODE_PATHS = ["features", "training", "riskloop"]
MODEL_REQUIREMENTS = ["mlflow", "xgboost-cpu", "pandas", "numpy", "scikit-learn", "pyyaml", "pydantic",
                      "pydantic-settings"]  # fmt: skip


def pinned(packages: list[str]) -> list[str]:
    return [f"{p}=={version(p)}" for p in packages]


def main() -> None:
    params = load_params()
    tr = params.train
    fit.check_device(tr)
    client, exp_id, registry = connect(params.registry)
    with open(paths.BUILDER, "rb") as fh:
        builder: FeatureBuilder = pickle.load(fh)
    target = params.data.target
    frames = {n: pd.read_parquet(paths.FEATURES / f"{n}.parquet") for n in ("train", "valid")}
    names = builder.feature_names_
    monotone = fit.monotone_vector(tr, names)
    dtrain = xgb.DMatrix(frames["train"][names], label=frames["train"][target])
    dvalid = xgb.DMatrix(frames["valid"][names], label=frames["valid"][target])

    data_hash = dvc_data_hash()
    name = search.study_name(params, data_hash)
    study = search.open_study(name, tr, tr.seed)
    commit = git_commit()
    with mlflow.start_run(experiment_id=exp_id, run_name=f"train-{name}") as parent:
        run_id = parent.info.run_id
        mlflow.set_tags({search.STUDY_TAG: name, "riskloop.role": "study", "git_commit": commit,
                         "data_hash": data_hash, "optuna_storage": stores.redact(stores.optuna_storage())})  # fmt: skip
        mlflow.log_params(
            {f"train.{k}": v for k, v in tr.model_dump(exclude={"search_space"}).items()}
        )
        logger = search.TrialLogger(client, exp_id, run_id, name)
        search.optimize(study, search.make_objective(dtrain, dvalid, tr, monotone, logger), tr)
        try:
            best = study.best_trial
        except ValueError as exc:
            raise RiskloopError(
                f"study {name} has no completed trial (all pruned or failed)"
            ) from exc

        best_params = {**search.base_xgb_params(tr, monotone, tr.seed), **best.params}
        both = pd.concat([frames["train"], frames["valid"]], ignore_index=True)
        rounds = fit.refit_rounds(
            best.user_attrs["best_iteration"], len(frames["train"]), len(both)
        )
        y = both[target].to_numpy()
        cv_mean, cv_std = fit.cross_validate(
            both[names], y, best_params, rounds, tr.cv_folds, tr.seed
        )
        booster = fit.fit_booster(both[names], y, best_params, rounds)
        model = CreditRiskModel(builder, booster)

        raw_train = pd.read_parquet(paths.PREPARED / "train.parquet")
        # float64 signature: JSON clients send 3 or 3.0 alike, and MLflow upcasts ints safely
        example = raw_train[builder.input_columns].head(5).astype("float64")
        summary = {"best_valid_auc": best.value, "cv_auc_mean": cv_mean, "cv_auc_std": cv_std,
                   "boost_rounds": rounds, "n_trials": search.finished(study)}  # fmt: skip
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        mlflow.log_metrics(summary)
        for split in ("train", "valid"):
            src = pd.read_parquet(paths.PREPARED / f"{split}.parquet")
            with warnings.catch_warnings():  # a local path matches two equivalent source types
                warnings.simplefilter("ignore", UserWarning)
                ds = mlflow.data.from_pandas(src, source=str(params.data.raw_path.resolve()), targets=target,
                                             name=f"{split}@{data_hash[:8]}", digest=data_hash[:8])  # fmt: skip
                mlflow.log_input(ds, context="training" if split == "train" else "validation")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=model, code_paths=CODE_PATHS, input_example=example,
            signature=infer_signature(example, model.predict_proba(example)),
            pip_requirements=pinned(MODEL_REQUIREMENTS),
        )  # fmt: skip
        mlflow.log_dict(params.model_dump(mode="json"), "params.json")

    tags = {"git_commit": commit, "data_hash": data_hash, "study_name": name, "run_id": run_id,
            "params": params.train.model_dump_json(exclude={"search_space"}),
            "best_params": str(best.params), **{k: f"{v:.6g}" for k, v in summary.items()}}  # fmt: skip
    mv = registry.register_challenger(info.model_uri, tags)
    paths.write_json(paths.TRAIN_REPORT, {
        "model_name": registry.name, "version": mv.version, "run_id": run_id, "study_name": name,
        "model_uri": info.model_uri, "data_hash": data_hash, "best_params": best.params, **summary,
    })  # fmt: skip
    log.info("registered %s v%s as @%s (cv auc %.4f ± %.4f)", registry.name, mv.version,
             params.registry.challenger_alias, cv_mean, cv_std)  # fmt: skip


if __name__ == "__main__":
    run_main(main)
