"""Which BentoML model a bento serves: pinned at build time by `make bento`."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_TAG_FILE = Path(__file__).resolve().parent / "bento_model_tag.txt"


def model_tag(default_name: str) -> str:
    """RISKLOOP_BENTO_MODEL, else the tag pinned in the bento, else `<name>:latest` (dev)."""
    if os.environ.get("RISKLOOP_BENTO_MODEL"):
        return os.environ["RISKLOOP_BENTO_MODEL"]
    if MODEL_TAG_FILE.exists():
        return MODEL_TAG_FILE.read_text().strip()
    return f"{default_name}:latest"
