"""`riskloop promote` enforces the fairness gates: a candidate failing one is refused with the
gate named, @champion does not move and nothing is audited; once it passes, the audit entry
keeps every gate's value, threshold and verdict. Cheap: only the `prepare` stage runs; the
model is fitted here (tests/modelling.py, no Optuna) and registered the way train does."""

from __future__ import annotations

import json
import re

import pytest
from mlflow import MlflowClient

from tests.conftest import make_repo_copy, stratified_sample
from tests.modelling import fit_small_model, register

pytestmark = pytest.mark.slow


def promote(repo, check: bool = True):
    return repo.py("-c", "from riskloop.app import main; main()", "promote", "--reason", "gates",
                   check=check)  # fmt: skip


def test_promote_refuses_a_candidate_that_fails_a_fairness_gate(tmp_path, raw, params):
    sample = stratified_sample(raw, params.data.target, 3000)
    repo = make_repo_copy(tmp_path, sample)
    repo.dvc("repro", "prepare")
    # regularized like a tuned model: its train-split scores stay close to the test split's
    model, parts = fit_small_model(sample, params, 60, ("train", "valid"), learning_rate=0.1,
                                   max_depth=2, min_child_weight=10)  # fmt: skip
    state = tmp_path / "state"
    version = register(state, model, params, parts["test"], champion=False)
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}", f"sqlite:///{state / 'mlflow.db'}")

    repo.set_params(**{"promotion.min_approval_ratio": 0.999})
    refused = promote(repo, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert re.search(rf"v{version} not promoted: failed gate\(s\) approval_ratio\[SEX\]: 0\.\d+ "
                     r"vs min 0\.9990", refused.stderr), refused.stderr  # fmt: skip
    assert "[FAIL] approval_ratio[SEX]:" in refused.stdout and "vs min 0.9990" in refused.stdout
    assert re.search(r"female \d+\.\d% of \d+, male ", refused.stdout)  # labels, not codes
    registered = client.get_registered_model("credit-risk")
    assert "champion" not in registered.aliases
    assert not any(k.startswith("riskloop.audit.") for k in registered.tags)
    assert "promoted_by" not in client.get_model_version("credit-risk", version).tags

    repo.set_params(**{"promotion.min_approval_ratio": 0.8})
    promoted = promote(repo)
    assert f"@champion -> v{version} (first champion)" in promoted.stdout, promoted.stdout
    assert "[pass] score_psi:" in promoted.stdout
    (entry,) = [json.loads(v) for k, v in client.get_registered_model("credit-risk").tags.items()
                if k.startswith("riskloop.audit.")]  # fmt: skip
    gate = entry["gates"]["approval_ratio[SEX]"]
    assert gate["verdict"] == "pass" and gate["threshold"] == 0.8 and 0.8 <= gate["value"] <= 1
    assert {"auc_floor", "auc_gap[AGE]", "score_psi"} <= set(entry["gates"])
