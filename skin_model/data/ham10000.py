"""Read HAM10000: find the folder, load the metadata, split by lesion.

Two layouts are understood: the official release (`HAM10000_images_part_1/`,
`HAM10000_images_part_2/`) and the flat `images/` folder of the reduced copy.
Masks (`masks/` or `HAM10000_segmentations_lesion_tschandl/`) are optional.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skin_model.constants import CLASSES, METADATA_FILE

if TYPE_CHECKING:  # pandas (about 60 MB resident) loads only when a dataset is read, not to score a photo
    import pandas as pd

IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
MASK_DIRS = ("masks", "HAM10000_segmentations_lesion_tschandl")
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
SPLITS = ("train", "val", "test")


class DatasetError(FileNotFoundError):
    """The HAM10000 folder is missing or incomplete; the message says what is missing."""


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Where HAM10000 lives: the argument, else `HAM10000_DIR`."""
    chosen = root if root is not None else os.environ.get("HAM10000_DIR")
    if not chosen:
        raise DatasetError(
            "no HAM10000 folder given: pass its path or set the HAM10000_DIR environment variable"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DatasetError(f"HAM10000 folder not found: {path}")
    return path


@dataclass(frozen=True)
class Ham10000:
    """A HAM10000 folder: the metadata table with resolved image and mask paths."""

    root: Path
    table: pd.DataFrame

    @property
    def fingerprint(self) -> str:
        """md5 of the metadata file, recorded in the model card."""
        return hashlib.md5((self.root / METADATA_FILE).read_bytes()).hexdigest()

    def lesion(self, lesion_id: str) -> pd.DataFrame:
        return self.table[self.table.lesion_id == lesion_id]


def _index_files(root: Path, folders: tuple[str, ...], suffix: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        directory = root / folder
        if directory.is_dir():
            for path in directory.iterdir():
                if path.name.endswith(suffix):
                    found[path.name[: -len(suffix)]] = path
    return found


def load_ham10000(root: str | os.PathLike | None = None, require_images: bool = True) -> Ham10000:
    """Load the metadata and locate every image, with a clear error when parts are missing."""
    import pandas as pd

    path = resolve_root(root)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise DatasetError(f"{METADATA_FILE} is missing from {path}")
    table = pd.read_csv(meta_path)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing_cols:
        raise DatasetError(f"{meta_path.name} lacks the columns: {', '.join(missing_cols)}")
    unknown = sorted(set(table.dx) - set(CLASSES))
    if unknown:
        raise DatasetError(f"{meta_path.name} has unknown diagnoses: {', '.join(unknown)}")
    images = _index_files(path, IMAGE_DIRS, ".jpg")
    if require_images:
        if not images:
            raise DatasetError(
                f"no images in {path}: expected {IMAGE_DIRS[0]}/ or "
                f"{IMAGE_DIRS[1]}/ and {IMAGE_DIRS[2]}/ holding ISIC_*.jpg"
            )
        absent = [i for i in table.image_id if i not in images]
        if absent:
            raise DatasetError(
                f"{len(absent)} images listed in {METADATA_FILE} are missing from {path} "
                f"(first: {absent[0]}.jpg)"
            )
    masks = _index_files(path, MASK_DIRS, "_segmentation.png")
    table = table.copy()
    table["path"] = [str(images[i]) if i in images else None for i in table.image_id]
    table["mask_path"] = [str(masks[i]) if i in masks else None for i in table.image_id]
    table["label"] = [CLASSES.index(d) for d in table.dx]
    return Ham10000(root=path, table=table.reset_index(drop=True))


def split_lesions(table: pd.DataFrame, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> pd.Series:
    """Assign each image to train/val/test, grouped by lesion_id and stratified by diagnosis.

    Deterministic for a given seed and table; all images of a lesion share a split.
    """
    lesions = table.groupby("lesion_id")["dx"].agg(lambda s: s.mode().iloc[0]).sort_index()
    rng = np.random.RandomState(seed)
    assignment: dict[str, str] = {}
    for dx in sorted(lesions.unique()):
        ids = np.array(sorted(lesions[lesions == dx].index))
        rng.shuffle(ids)
        n = len(ids)
        n_test = int(math.floor(n * fractions[2] + 0.5))
        n_val = int(math.floor(n * fractions[1] + 0.5))
        for i, lesion_id in enumerate(ids):
            assignment[lesion_id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return table.lesion_id.map(assignment).rename("split")


def split_table(ham: Ham10000, split: str, seed: int = 0, limit: int | None = None) -> pd.DataFrame:
    """The rows of one part ("train", "val" or "test") of the lesion-grouped split; `limit` keeps
    the first that many (quick runs)."""
    table = ham.table.assign(split=split_lesions(ham.table, seed))
    table = table[table.split == split].reset_index(drop=True)
    return table.iloc[:limit].reset_index(drop=True) if limit else table


def lesion_groups(table: pd.DataFrame, min_photos: int = 1) -> list[np.ndarray]:
    """Positional row indices of each lesion's photos, in image_id order (HAM10000 has no dates)."""
    positions = table.reset_index(drop=True)
    groups = []
    for _, rows in positions.sort_values("image_id").groupby("lesion_id", sort=True):
        if len(rows) >= min_photos:
            groups.append(rows.index.to_numpy())
    return groups


def training_tables(table: pd.DataFrame, seed: int = 0, limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and validation rows of the lesion-grouped split; `limit` keeps that many
    random photos per split (quick smoke runs)."""
    table = table.assign(split=split_lesions(table, seed))
    if limit:
        table = table.sample(frac=1.0, random_state=seed).groupby("split").head(limit)
    return (table[table.split == "train"].reset_index(drop=True),
            table[table.split == "val"].reset_index(drop=True))


