"""Promotions made in the MLflow UI, gated, audited and deployed: the receiver of MLflow's
registry webhook (`model_version_alias.created`, HMAC-signed) that `make ui` registers.

When @champion is moved to a version riskloop did not put there (a reviewer in the UI, or
anyone through the REST API), the same gates as `make promote` decide (pipelines/promote.py
`gate_candidate`, against the champion riskloop last recorded, on the current test split):

- pass: the move stays; the version gets the promotion tags, the audit trail a `promote-ui`
  entry with every gate's figures, and `riskloop deploy` serves it (as `make promote` does);
- fail: @champion goes back to the recorded champion and the audit trail gets a `refuse-ui`
  entry naming the failing gates.

Moves riskloop made itself (promote, rollback, this receiver's own revert) are recognised by
the audit trail, whose newest entry always names where @champion points after it ("to"): an
event is looked at a few seconds after it arrives, once such a writer has recorded its move.
MLflow's payload does not say who moved the alias: the entry says so."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from riskloop.settings import load_params

log = logging.getLogger("riskloop.ui_review")
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_S = 300  # older (or future) deliveries are refused: a captured one cannot be replayed
SETTLE_S = 3.0  # time for riskloop's own alias writers to record their move
EVENT = "model_version_alias.created"


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature: v1,base64(HMAC-SHA256(secret, "id.timestamp.body"))."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Delivery:
    entity: str
    action: str
    data: dict[str, Any]


def verify(secret: str, headers: Any, body: bytes, now: float, seen: OrderedDict) -> Delivery:
    """The delivery, if signed with `secret`, recent and not seen before; else ValueError
    saying why. Pure but for `seen` (delivery ids already accepted, oldest first)."""
    delivery_id, timestamp = headers.get(DELIVERY_HEADER), headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER) or ""
    if not delivery_id or not timestamp or not given:
        raise ValueError("unsigned delivery: signature, timestamp and delivery id are required")
    if not hmac.compare_digest(given, signature(secret, delivery_id, timestamp, body)):
        raise ValueError("bad signature")
    try:
        age = now - int(timestamp)
    except ValueError:
        raise ValueError(f"bad timestamp {timestamp!r}") from None
    if abs(age) > MAX_AGE_S:
        raise ValueError(f"stale delivery ({age:.0f} s old)")
    if delivery_id in seen:
        raise ValueError(f"delivery {delivery_id} seen already")
    seen[delivery_id] = now
    while len(seen) > 10_000:
        seen.popitem(last=False)
    doc = json.loads(body)
    return Delivery(str(doc.get("entity")), str(doc.get("action")), dict(doc.get("data") or {}))


def recorded_champion(history: list[dict[str, Any]]) -> str | None:
    """Where @champion points according to riskloop's audit trail (its newest entry's "to")."""
    return str(history[-1]["to"]) if history and history[-1].get("to") else None


def review(version: str) -> str:
    """Gate a move of @champion to `version` made outside riskloop; returns what was done."""
    from pipelines.promote import gate_candidate
    from training.registry import actor, now_iso
    from training.tracking import connect

    params = load_params()
    _, _, registry = connect(params.registry)
    current = registry.champion()
    if current is None or str(current.version) != str(version):
        return f"@champion no longer points at v{version}: a later event decides"
    known = recorded_champion(registry.history())
    if known == str(version):
        return f"v{version} is the champion riskloop recorded: nothing to do"
    candidate = registry.version(version)
    previous = registry.version(known) if known else None
    gates = gate_candidate(params, registry, candidate, previous)
    figures = {g.name: g.record() for g in gates}  # as promote records them
    failed = [g for g in gates if not g.passed]
    by = "the MLflow UI or REST API (MLflow's webhook does not name the user)"
    if failed:
        reason = "refused: " + "; ".join(f"gate {g.summary} failed ({g.detail})" for g in failed)
        # recorded before the revert, so the revert's own event finds it and does nothing
        registry.record("refuse-ui", str(version), known, reason, gates=figures, moved_by=by,
                        attempted=str(version))  # fmt: skip
        # what the version page in the UI shows: why this version is not the champion
        registry.set_tags(version, {"ui_promotion_refused": f"{now_iso()}: " + "; ".join(
            f"{g.summary} failed" for g in failed)})  # fmt: skip
        if known:
            registry.client.set_registered_model_alias(
                registry.name, params.registry.champion_alias, known
            )
        else:
            registry.client.delete_registered_model_alias(
                registry.name, params.registry.champion_alias
            )
        return (
            f"v{version} refused, @champion back on {f'v{known}' if known else 'nothing'}: {reason}"
        )
    reason = "promoted in the MLflow UI; every gate passed"
    registry.set_tags(version, {
        "promoted_by": f"{actor()} (webhook) for {by}", "promoted_at": now_iso(),
        "promotion_reason": reason, "previous_champion": known or "none", "rolled_back": "false",
    })  # fmt: skip
    registry.record("promote-ui", known, str(version), reason, gates=figures, moved_by=by)
    deployed = subprocess.run(
        [sys.executable, "-m", "pipelines.deploy", "--reason", f"UI promotion of v{version}"]
    )
    outcome = (
        "deployed" if deployed.returncode == 0 else f"deploy failed (exit {deployed.returncode})"
    )
    return f"v{version} approved (was {f'v{known}' if known else 'none'}), {outcome}"


class Receiver:
    """The webhook's HTTP endpoint (POST /) and one worker that reviews moves in order."""

    def __init__(self, secret: str, champion_alias: str, host: str = "127.0.0.1", port: int = 0,
                 settle_s: float = SETTLE_S) -> None:  # fmt: skip
        self.secret, self.champion_alias, self.settle_s = secret, champion_alias, settle_s
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()
        self.work: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.port = self.server.server_address[1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, text = receiver.accept(self.headers, body)
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

        return Handler

    def accept(self, headers: Any, body: bytes) -> tuple[int, str]:
        try:
            with self.lock:
                delivery = verify(self.secret, headers, body, time.time(), self.seen)
        except (ValueError, json.JSONDecodeError) as exc:
            log.warning("webhook delivery refused: %s", exc)
            return 401, str(exc)
        event = f"{delivery.entity}.{delivery.action}"
        if event == EVENT and delivery.data.get("alias") == self.champion_alias:
            self.work.put((time.monotonic() + self.settle_s, str(delivery.data["version"])))
            return 202, "queued"
        return 200, "ignored"

    def _work(self) -> None:
        while (item := self.work.get()) is not None:
            due, version = item
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                log.info("@champion moved to v%s outside riskloop? %s", version, review(version))
            except Exception:  # one bad review must not stop the receiver
                log.exception("reviewing the move of @champion to v%s failed", version)

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._work, daemon=True).start()

    def stop(self) -> None:
        self.work.put(None)
        self.server.shutdown()
