"""Files the stages hand to each other (declared as deps/outs in dvc.yaml)."""

from pathlib import Path

PREPARED = Path("data/prepared")
FEATURES = Path("data/features")
BUILDER = FEATURES / "feature_builder.pkl"
REPORTS = Path("reports")
PREPARE_REPORT = REPORTS / "prepare.json"
TRAIN_REPORT = REPORTS / "train.json"
EVAL_DIR = REPORTS / "evaluate"
PLOTS = REPORTS / "plots"
METRICS = Path("metrics.json")
SPLITS = ("train", "valid", "test")
RECENT = PREPARED / "recent.parquet"  # newest labelled production rows (after a retrain)
PRODUCTION_SUBDIR = "production"  # data/raw/production/<batch>/{records,lineage}.csv


def parts(path: Path) -> list[Path]:
    """An output's Parquet files, in order: a Dask dataset's parts, or the local engine's one
    file."""
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def clear(path: Path) -> None:
    """Remove an output, a file (the local engine's) or a directory (a Dask dataset)."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, payload: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
