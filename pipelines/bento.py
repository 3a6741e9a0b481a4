"""`make bento`: import `models:/<name>@champion` into the BentoML model store (labels: registry
version, run id, data hash, contract and feature-code hashes), check it as the service will
(every request decoder and engine on its golden batch), build the bento from bentofile.yaml
and record it as the deployment a running service follows (serving/deployment.py).

The bento is built from the model alone: request schemas, column order, example and feature
code come from the model's contract and code, whatever the working tree's params.yaml and
features/ say now. It carries the model, so serving never calls the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import bentoml

from features.contract import Contract
from riskloop import stores
from riskloop.cli import run_main
from riskloop.errors import RegistryError, RiskloopError
from riskloop.package import ModelPackage
from riskloop.settings import load_params
from serving import deployment, golden
from serving.codecs import Codecs
from serving.model_tag import MODEL_TAG_FILE
from serving.scorer import Scorer
from training.registry import actor, alias_uri
from training.tracking import connect


def import_champion() -> tuple[bentoml.Model, str]:
    """(the champion as a BentoML model, its registry version)."""
    params = load_params()
    _, _, registry = connect(params.registry)
    champ = registry.champion()
    if champ is None:
        raise RegistryError(
            f"{registry.name} has no @{params.registry.champion_alias}: run `make run` / `make promote`"
        )
    labels = {"registry_version": str(champ.version), "run_id": champ.run_id or "",
              "data_hash": champ.tags.get("data_hash", ""), "alias": params.registry.champion_alias,
              "contract_sha": champ.tags.get("contract_sha", ""),
              "feature_code_sha": champ.tags.get("feature_code_sha", "")}  # fmt: skip
    metadata = {
        k: v for k, v in champ.tags.items() if k.startswith(("test_", "cv_", "git_", "study"))
    }
    uri = alias_uri(registry.name, params.registry.champion_alias)
    model = bentoml.mlflow.import_model(registry.name, uri, labels=labels, metadata=metadata)
    print(f"imported {uri} (v{champ.version}) as {model.tag}")
    return model, str(champ.version)


def check(model: bentoml.Model) -> dict:
    """What the service does at load: decoders and engines against the golden batch."""
    pkg = ModelPackage.of_bento(model)
    contract = Contract.from_json(pkg.contract_doc)
    inner = pkg.load_pyfunc().unwrap_python_model()
    codecs = Codecs(contract, load_params().serving, pkg.example)
    problems = golden.verify(codecs, inner.builder, pkg.golden)
    if problems:
        raise RiskloopError(f"{model.tag} fails its golden batch:\n  " + "\n  ".join(problems))
    status = Scorer(inner.booster, golden.golden_features(pkg.golden), pkg.golden).status
    print(f"golden batch: {status.checked_rows} rows reproduced by every decoder; engines: "
          f"contributions {status.contributions}, scores {status.scores}"
          + (f" (fallbacks: {status.fallbacks})" if status.fallbacks else ""))  # fmt: skip
    example = stores.state_dir() / "bento" / "example_request.json"
    example.parent.mkdir(parents=True, exist_ok=True)
    example.write_text(json.dumps({"records": [pkg.example]}) + "\n")
    return status.as_dict()


def build(reason: str = "make bento") -> deployment.DeploymentRecord:
    model, version = import_champion()
    check(model)
    # Pin the exact model in the bento: "latest" would follow later imports at serve time.
    # The file exists only during the build, so the working tree never points at a stale model.
    MODEL_TAG_FILE.write_text(f"{model.tag}\n")
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        "--bentofile",
        "bentofile.yaml",
        "--output",
        "tag",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        MODEL_TAG_FILE.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RiskloopError(
            f"`bentoml build` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    bento = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    record = deployment.DeploymentRecord(
        model_tag=str(model.tag), version=version, bento=bento,
        deployed_at=datetime.now(UTC).isoformat(timespec="seconds"), deployed_by=actor(), reason=reason,
    )  # fmt: skip
    deployment.write(stores.deployment_file(), record)
    print(
        f"built bento {bento} serving v{version}; deployment recorded in {stores.deployment_file()}"
    )
    return record


def main() -> None:
    build()


if __name__ == "__main__":
    run_main(main)
