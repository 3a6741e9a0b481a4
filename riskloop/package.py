"""A registered model version as a package: the one MLflow pyfunc plus what it carries to be
served and monitored without the working tree (artifacts written by training/package.py):

- contract.json: the data contract it was trained on (columns, types, bounds, levels, which
  are protected, the model's input order) and the hash of its feature code;
- golden.json: real rows and edge cases with XGBoost's own features, probabilities, margins
  and contributions, which serving checks every engine against;
- reference.parquet + reference.json: its out-of-sample reference for monitoring (features,
  protected attributes, score and label of the rows it was evaluated on) and test metrics.

Readers only; nothing here unpickles the model except `load_pyfunc`, which loads it with
its own feature code (`model_code`)."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

CONTRACT = "contract.json"
GOLDEN = "golden.json"
REFERENCE = "reference.parquet"
REFERENCE_META = "reference.json"
ARTIFACTS = {
    "contract": CONTRACT,
    "golden": GOLDEN,
    "reference": REFERENCE,
    "reference_meta": REFERENCE_META,
}  # MLflow artifact key -> file under artifacts/
# The reference's score and label columns (beside the features and protected attributes).
REFERENCE_SCORE = "probability"
REFERENCE_LABEL = "defaulted"
# Packages the model carries as MLflow code_paths: its feature code and pyfunc class.
MODEL_CODE = ("features", "training")
BENTO_MLFLOW_DIR = "mlflow_model"  # where bentoml.mlflow keeps the MLflow model in a BentoML model


@contextlib.contextmanager
def model_code() -> Iterator[None]:
    """While a model loads, `features` and `training` resolve to the copy the model carries
    (MLflow puts its code directory first on sys.path), not to a copy this process imported
    earlier; afterwards the process's own modules are back. The loaded objects keep their
    own modules, so a champion is featurized by the code it was trained with."""

    def ours(name: str) -> bool:
        return name.split(".", 1)[0] in MODEL_CODE

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    path = list(sys.path)
    try:
        yield
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path[:] = path


class ModelPackage:
    """An MLflow model directory (the one with `MLmodel`) written by riskloop's train stage."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "MLmodel").exists():
            raise FileNotFoundError(f"{self.path} is not an MLflow model directory (no MLmodel)")

    @classmethod
    def of_bento(cls, bento_model: Any) -> ModelPackage:
        """The MLflow model inside a BentoML model (`bentoml.mlflow.import_model`)."""
        return cls(bento_model.path_of(BENTO_MLFLOW_DIR))

    @classmethod
    def download(cls, uri: str, dst: str | Path | None = None) -> ModelPackage:
        """`models:/name/version` (or any MLflow model URI) as a local directory."""
        import mlflow

        return cls(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst and str(dst)))

    def artifact(self, name: str) -> Path:
        path = self.path / "artifacts" / name
        if not path.exists():
            raise FileNotFoundError(
                f"{self.path} carries no {name}: it was not logged by riskloop's train stage "
                "(retrain it with `dvc repro`)"
            )
        return path

    @cached_property
    def contract_doc(self) -> dict[str, Any]:
        return json.loads(self.artifact(CONTRACT).read_text())

    @cached_property
    def golden(self) -> dict[str, Any]:
        return json.loads(self.artifact(GOLDEN).read_text())

    @cached_property
    def reference_meta(self) -> dict[str, Any]:
        return json.loads(self.artifact(REFERENCE_META).read_text())

    def reference(self):  # -> pd.DataFrame (pandas imported only when asked)
        import pandas as pd

        return pd.read_parquet(self.artifact(REFERENCE))

    def reference_scores(self):  # -> np.ndarray: the test split's probabilities of default
        import pandas as pd

        return pd.read_parquet(self.artifact(REFERENCE), columns=[REFERENCE_SCORE])[
            REFERENCE_SCORE
        ].to_numpy()

    @property
    def example(self) -> dict[str, Any]:
        """A real record of the data it was trained on (the golden batch's first row)."""
        return self.golden["records"][0]

    def load_pyfunc(self):
        """The MLflow pyfunc, loaded with the feature code the model carries."""
        import mlflow.pyfunc

        with model_code():
            return mlflow.pyfunc.load_model(str(self.path))


@functools.lru_cache(maxsize=4)
def worker_model(uri: str, tracking_uri: str) -> tuple[ModelPackage, Any]:
    """A model version's package and pyfunc, downloaded and loaded once per Dask worker
    process (not once per partition) from the tracking store at `tracking_uri`."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    pkg = ModelPackage.download(uri)
    return pkg, pkg.load_pyfunc()
