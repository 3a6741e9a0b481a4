"""Entry-point wrapper: user errors become one line on stderr and exit code 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from riskloop.errors import RiskloopError


def run_main(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # MLflow and alembic are chatty at INFO; keep riskloop's own messages readable.
    for noisy in ("alembic", "mlflow", "urllib3", "git", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except RiskloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
