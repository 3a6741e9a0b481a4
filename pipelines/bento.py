"""`make bento`: import `models:/<name>@champion` into the BentoML model store (labels:
registry version, run id, data hash, test metrics) and build the bento from
bentofile.yaml. The bento then carries the model: serving never calls the registry."""

from __future__ import annotations

import subprocess
import sys

import bentoml

from riskloop.cli import run_main
from riskloop.errors import RegistryError, RiskloopError
from riskloop.settings import load_params
from serving.model_tag import MODEL_TAG_FILE
from training.registry import alias_uri
from training.tracking import connect


def import_champion() -> bentoml.Model:
    params = load_params()
    _, _, registry = connect(params.registry)
    champ = registry.champion()
    if champ is None:
        raise RegistryError(
            f"{registry.name} has no @{params.registry.champion_alias}: run `make run` / `make promote`"
        )
    labels = {"registry_version": str(champ.version), "run_id": champ.run_id or "",
              "data_hash": champ.tags.get("data_hash", ""), "alias": params.registry.champion_alias}  # fmt: skip
    metadata = {
        k: v for k, v in champ.tags.items() if k.startswith(("test_", "cv_", "git_", "study"))
    }
    uri = alias_uri(registry.name, params.registry.champion_alias)
    model = bentoml.mlflow.import_model(registry.name, uri, labels=labels, metadata=metadata)
    print(f"imported {uri} (v{champ.version}) as {model.tag}")
    return model


def main() -> None:
    model = import_champion()
    # Pin the exact model in the bento: "latest" would follow later imports at serve time.
    # The file exists only during the build, so the working tree never points at a stale model.
    MODEL_TAG_FILE.write_text(f"{model.tag}\n")
    cmd = [sys.executable, "-m", "bentoml", "build", "--bentofile", "bentofile.yaml"]
    try:
        proc = subprocess.run(cmd)
    finally:
        MODEL_TAG_FILE.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RiskloopError(
            f"`bentoml build` failed (exit {proc.returncode}); see its output above"
        )


if __name__ == "__main__":
    run_main(main)
