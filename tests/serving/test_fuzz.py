"""The request decoders under coverage-guided fuzzing (tests/serving/fuzz_decoders.py, atheris)
for a fixed budget each, and every crasher ever found kept as a regression test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CRASHERS = Path(__file__).parent / "crashers"
BUDGET_S = int(os.environ.get("RISKLOOP_FUZZ_SECONDS", "30"))


@pytest.mark.parametrize("path", sorted(CRASHERS.glob("*.bin")), ids=lambda p: p.stem)
def test_crashers_are_refused_cleanly(path):
    """Each input that once crashed or escaped a decoder now ends as an answer or a 4xx."""
    from tests.serving.fuzz_decoders import TARGETS

    TARGETS[path.stem.split("-")[0]](path.read_bytes())


@pytest.mark.parametrize("target", ["json", "arrow"])
def test_fuzzing_finds_no_crash_or_uncaught_error(target, tmp_path):
    from tests.serving.fuzz_decoders import seeds

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()[target]):
        (corpus / f"seed-{i}").write_bytes(
            b"explain=all&request_id=r1\n" + seed if target == "arrow" else seed
        )
    for crasher in CRASHERS.glob(f"{target}-*.bin"):
        (corpus / crasher.name).write_bytes(crasher.read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "tests.serving.fuzz_decoders", target, f"-max_total_time={BUDGET_S}",
         "-timeout=5", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_S + 120,
    )  # fmt: skip
    found = sorted(p.name for p in tmp_path.glob("*-*") if p.is_file())
    tail = done.stderr[-3000:]
    assert done.returncode == 0 and not found, f"{found}: keep them in {CRASHERS}\n{tail}"
    assert "Done" in done.stderr, tail  # libFuzzer ran its budget out
