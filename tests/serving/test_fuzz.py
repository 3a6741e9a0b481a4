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


def test_a_uint64_beyond_int64_is_not_a_level():
    """The fuzzer's arrow-uint64-beyond-int64, spelled out: a categorical column sent as
    uint64 is matched to its levels, and a value no int64 holds is named as no level (422),
    not a 500 from the cast."""
    import pyarrow as pa

    from serving import arrowio
    from tests.serving.fuzz_decoders import codecs, seeds

    table = pa.ipc.open_stream(seeds()["arrow"][1]).read_all()
    sex = table.column_names.index("SEX")
    good = table.set_column(sex, "SEX", pa.array([1] * table.num_rows, pa.uint64()))
    codecs().arrow.decode(arrowio.stream_bytes(good), "")  # uint64 levels are levels
    huge = [2**64 - 1] + [0] * (table.num_rows - 1)
    bad = table.set_column(sex, "SEX", pa.array(huge, pa.uint64()))
    with pytest.raises(arrowio.ArrowRequestError) as refused:
        codecs().arrow.decode(arrowio.stream_bytes(bad), "")
    assert refused.value.status == 422 and "SEX" in str(refused.value.errors), refused.value.errors
