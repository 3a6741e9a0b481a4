"""Moving @champion in the MLflow UI (here: through the server's REST API, as the UI does) goes
through riskloop's webhook: a move that passes the gates stays, is audited and deployed; one
that fails a gate is undone and the refusal recorded with the failing gate. The receiver takes
only deliveries signed with its secret, recent and not replayed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import OrderedDict

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from pipelines.ui_review import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    recorded_champion,
    signature,
    verify,
)
from tests.conftest import make_repo_copy, stratified_sample
from tests.serving.server import free_port
from training.registry import AUDIT_PREFIX


def signed(secret: str, body: bytes, at: float, delivery: str | None = None) -> dict[str, str]:
    delivery = delivery or uuid.uuid4().hex
    return {DELIVERY_HEADER: delivery, TIMESTAMP_HEADER: str(int(at)),
            SIGNATURE_HEADER: signature(secret, delivery, str(int(at)), body)}  # fmt: skip


def test_signature_is_mlflows_own():
    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}})
    assert signature("s3cret", "d-1", "1700000000", body.encode()) == _generate_hmac_signature(
        "s3cret", "d-1", "1700000000", body
    )


def test_only_signed_recent_unseen_deliveries_are_taken():
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "m", "alias": "champion", "version": "2"}}).encode()  # fmt: skip
    now, seen = time.time(), OrderedDict()
    headers = signed("s", body, now)
    assert verify("s", headers, body, now, seen).data["version"] == "2"
    with pytest.raises(ValueError, match="seen already"):
        verify("s", headers, body, now, seen)  # a replay
    with pytest.raises(ValueError, match="bad signature"):
        verify("other", signed("s", body, now), body, now, seen)
    with pytest.raises(ValueError, match="bad signature"):
        verify("s", signed("s", body, now), body.replace(b'"2"', b'"3"'), now, seen)
    with pytest.raises(ValueError, match="stale"):
        verify("s", signed("s", body, now - 3600), body, now, seen)
    with pytest.raises(ValueError, match="unsigned"):
        verify("s", {}, body, now, seen)


def test_the_recorded_champion_is_where_the_newest_entry_left_it():
    assert recorded_champion([]) is None
    assert recorded_champion([{"to": "1"}, {"action": "refuse-ui", "from": "3", "to": "1"}]) == "1"


@pytest.mark.slow
def test_ui_moves_of_champion_are_gated_audited_and_deployed(tmp_path, raw, params):
    repo = make_repo_copy(tmp_path, stratified_sample(raw, params.data.target, 3000),
                          {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"})  # fmt: skip
    repo.set_params(**{"promotion.min_auc": 0.6, "promotion.max_auc_drop": 0.2})
    repo.commit("a floor this sample clears")
    repo.dvc("repro")
    repo.run("riskloop", "promote", "--reason", "first champion")
    repo.set_params(**{"train.n_trials": 4})
    repo.commit("another configuration")
    repo.dvc("repro")  # v2, the challenger
    port, hook_port = free_port(), free_port()
    ui = subprocess.Popen(["riskloop", "ui", "--port", str(port), "--webhook-port", str(hook_port)],
                          cwd=repo.path, env=repo.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    name, alias = params.registry.model_name, params.registry.champion_alias

    def move_in_ui(version: str) -> None:  # the request the UI's alias editor sends
        resp = httpx.post(f"{url}/api/2.0/mlflow/registered-models/alias",
                          json={"name": name, "alias": alias, "version": version}, timeout=10)  # fmt: skip
        assert resp.status_code == 200, resp.text

    def entry(action: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tags = client.get_registered_model(name).tags
            found = [json.loads(v) for k, v in sorted(tags.items())
                     if k.startswith(AUDIT_PREFIX) and json.loads(v)["action"] == action]  # fmt: skip
            if found:
                return found[-1]
            assert ui.poll() is None, ui.stdout.read() if ui.stdout else ""
            time.sleep(1)
        raise AssertionError(f"no {action} entry in the audit trail")

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert ui.poll() is None and time.monotonic() < deadline, (
                ui.stdout.read() if ui.stdout else ""
            )
            time.sleep(1)

        # passes the gates: the move stays, audited with the gate figures, and is deployed
        move_in_ui("2")
        approved = entry("promote-ui")
        assert (approved["from"], approved["to"]) == ("1", "2")
        assert {"auc_floor", "no_worse_than_champion"} <= set(approved["gates"]), approved
        assert str(client.get_model_version_by_alias(name, alias).version) == "2"
        assert client.get_model_version(name, "2").tags["previous_champion"] == "1"
        deadline = time.monotonic() + 240
        record = tmp_path / "state" / "deploy" / "current.json"
        while not (record.exists() and json.loads(record.read_text()).get("version") == "2"):
            assert time.monotonic() < deadline, "v2 was not deployed"
            time.sleep(1)

        # fails a gate (a floor v1 cannot clear): undone, and the refusal names the gate
        repo.set_params(**{"promotion.min_auc": 0.99})
        move_in_ui("1")
        refused = entry("refuse-ui")
        assert (refused["attempted"], refused["to"]) == ("1", "2")
        assert refused["gates"]["auc_floor"]["verdict"] == "FAIL", refused
        assert "gate auc_floor: " in refused["reason"] and "vs min 0.99" in refused["reason"]
        assert "auc_floor" in client.get_model_version(name, "1").tags["ui_promotion_refused"]
        deadline = time.monotonic() + 30
        while str(client.get_model_version_by_alias(name, alias).version) != "2":
            assert time.monotonic() < deadline, "the refused move was not undone"
            time.sleep(0.5)
        time.sleep(5)  # the revert's own event is recognised: nothing more is recorded
        actions = [json.loads(v)["action"] for k, v in client.get_registered_model(name).tags.items()
                   if k.startswith(AUDIT_PREFIX)]  # fmt: skip
        assert actions.count("refuse-ui") == 1 and actions.count("promote-ui") == 1, actions
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(30)
