"""Stage `features`: fit the feature builder on train only and transform every split. (The
monitoring reference is not here: each model version carries its own, training/package.py.)"""

from __future__ import annotations

import logging
import pickle

import pandas as pd

from features.transform import FeatureBuilder
from pipelines import paths
from riskloop.cli import run_main
from riskloop.settings import load_params

log = logging.getLogger("features")


def main() -> None:
    params = load_params()
    data = params.data
    if params.compute.engine == "dask":
        from pipelines import features_dask

        builder = features_dask.build(params)
        with open(paths.BUILDER, "wb") as fh:
            pickle.dump(builder, fh)
        return
    splits = {n: pd.read_parquet(paths.PREPARED / f"{n}.parquet") for n in paths.SPLITS}
    builder = FeatureBuilder(data, params.features).fit(splits["train"])
    paths.FEATURES.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        feats = builder.transform(frame)
        feats[data.target] = frame[data.target].to_numpy()
        paths.clear(paths.FEATURES / f"{name}.parquet")  # a Dask run's dataset, say
        feats.to_parquet(paths.FEATURES / f"{name}.parquet", index=False)
    with open(paths.BUILDER, "wb") as fh:
        pickle.dump(builder, fh)
    log.info("%d features from %d inputs", len(builder.feature_names_), len(builder.input_columns))


if __name__ == "__main__":
    run_main(main)
